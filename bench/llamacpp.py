"""llama.cpp as a yardstick: build it, convert a checkpoint to GGUF, quantize it, run llama-bench.

The llama.cpp source is the copy vendored in the PyPI sdist of `llama-cpp-python` 0.3.36 (it
supports Gemma 4). Everything lands under `bench/_llama/` (git-ignored) and is built once:

    _llama/llama_cpp_python-0.3.36.tar.gz   the sdist, from PyPI through pip
    _llama/llama.cpp/                       its vendor/llama.cpp (source, convert_hf_to_gguf.py)
    _llama/build/bin/                       llama-bench, llama-quantize
    _llama/gguf/<model>/                    converted and quantized GGUF files

The build pins the instruction sets this CPU advertises instead of `-march=native`: one host
kind here advertises AMX, but its VM kills AMX instructions with SIGILL, so a native build
crashes on quantized models there.

Run alone, `python bench/llamacpp.py` only builds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE / "_llama"
VERSION = "0.3.36"
SDIST = ROOT / f"llama_cpp_python-{VERSION}.tar.gz"
SRC = ROOT / "llama.cpp"
BUILD = ROOT / "build"
BIN = BUILD / "bin"
GGUF_DIR = ROOT / "gguf"
TARGETS = ("llama-bench", "llama-quantize")

#: llama.cpp's instruction-set options and the /proc/cpuinfo flag each one needs. They are set
#: from what this CPU advertises instead of `GGML_NATIVE` (machine-facts.md): one host kind
#: advertises AMX but its VM kills AMX instructions with SIGILL, so AMX stays off everywhere.
ISA_OPTIONS = {
    "AVX": "avx",
    "AVX2": "avx2",
    "FMA": "fma",
    "F16C": "f16c",
    "BMI2": "bmi2",
    "AVX512": "avx512f",
    "AVX512_VBMI": "avx512vbmi",
    "AVX512_VNNI": "avx512_vnni",
    "AVX512_BF16": "avx512_bf16",
    "AVX_VNNI": "avx_vnni",
}


def cpu_flags() -> set[str]:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def cmake_flags() -> list[str]:
    """Pinned instruction sets for this CPU (no native detection), AMX off."""
    flags = cpu_flags()
    out = ["-DGGML_NATIVE=OFF"]
    out += [f"-DGGML_{opt}={'ON' if need in flags else 'OFF'}" for opt, need in ISA_OPTIONS.items()]
    return out + ["-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF"]


#: only what the benchmark needs: no tests, examples, server or HTTPS
CMAKE_EXTRA = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_CURL=OFF",
]

#: llama-quantize type names of the formats compared
QUANT_TYPES = {"Q8_0": "Q8_0", "Q4_0": "Q4_0"}


def say(msg: str) -> None:
    print(f"[llama.cpp] {msg}", flush=True)


def _run(cmd: list[str], log: Path, cwd: Path | None = None, env: dict | None = None) -> None:
    """Run a command with its output in `log`; on failure show the log's tail."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=cwd, env=env)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-30:]
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}); {log}:\n" + "\n".join(tail))


def fetch_source() -> None:
    """Download the sdist with pip and extract its vendored llama.cpp."""
    if (SRC / "convert_hf_to_gguf.py").is_file():
        return
    ROOT.mkdir(parents=True, exist_ok=True)
    if not SDIST.is_file():
        say(f"downloading the llama-cpp-python {VERSION} sdist from PyPI ...")
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"llama-cpp-python=={VERSION}",
                "-d",
                str(ROOT),
            ],
            ROOT / "download.log",
        )
    say("extracting vendor/llama.cpp ...")
    prefix = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"
    tmp = ROOT / "extract.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(SDIST) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
        tar.extractall(tmp, members=members, filter="data")
    shutil.rmtree(SRC, ignore_errors=True)
    (tmp / prefix).rename(SRC)
    shutil.rmtree(tmp)


def build() -> Path:
    """Build llama-bench and llama-quantize (about 6-7 minutes on 2 cores, once)."""
    if all((BIN / t).is_file() for t in TARGETS):
        return BIN
    fetch_source()
    say(f"configuring (cmake; {' '.join(cmake_flags()[1:])}) ...")
    _run(
        ["cmake", "-S", str(SRC), "-B", str(BUILD), "-G", "Ninja", *cmake_flags(), *CMAKE_EXTRA],
        ROOT / "cmake.log",
    )
    say(f"building {', '.join(TARGETS)} (several minutes; log in {ROOT / 'build.log'}) ...")
    jobs = str(os.cpu_count() or 2)
    _run(
        ["cmake", "--build", str(BUILD), "-j", jobs, "--target", *TARGETS],
        ROOT / "build.log",
    )
    return BIN


def convert_env() -> dict[str, str]:
    """The environment for convert_hf_to_gguf.py: the vendored gguf-py comes first."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC / "gguf-py") + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("NO_LOCAL_GGUF", None)
    return env


def convert(hf_dir: Path, out: Path) -> Path:
    """Convert a transformers checkpoint folder (with a tokenizer.json) to a BF16 GGUF."""
    if out.is_file():
        return out
    fetch_source()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    say(f"converting {hf_dir.name} to {out.name} (BF16) ...")
    _run(
        [
            sys.executable,
            str(SRC / "convert_hf_to_gguf.py"),
            str(hf_dir),
            "--outfile",
            str(tmp),
            "--outtype",
            "bf16",
        ],
        out.parent / f"convert-{out.stem}.log",
        env=convert_env(),
    )
    tmp.rename(out)
    return out


def quantize(src: Path, out: Path, qtype: str) -> Path:
    """llama-quantize a BF16 GGUF to `qtype` (Q8_0, Q4_0), 2 threads."""
    if out.is_file():
        return out
    build()
    tmp = out.with_suffix(".tmp")
    say(f"quantizing {src.name} to {qtype} ...")
    _run(
        [str(BIN / "llama-quantize"), str(src), str(tmp), QUANT_TYPES[qtype], "2"],
        out.parent / f"quantize-{out.stem}.log",
    )
    tmp.rename(out)
    return out


def bench(gguf: Path, prompts: tuple[int, ...], n_gen: int, reps: int, threads: int) -> dict:
    """llama-bench: prefill tok/s per prompt length and decode tok/s, from its JSON output.

    Each test runs `reps` times after llama-bench's own warm-up run; decode (tg) starts from an
    empty context. The figure kept is the best repetition (the machine is shared; other work
    only slows a run down); llama-bench's mean is kept beside it. Every test runs with the
    weights read into memory (`--load-mode none`) and memory-mapped (`mmap`), and the faster
    counts, as this project's own loader reads E2B's decoder into memory (`load_model`):
    on this VM both engines decode faster that way (llama.cpp Q4_0 9.5 against 8.9 tok/s).
    Returns {"prefill": {S: tok/s}, "decode": tok/s, "mean": {...}, "load_mode": {...},
    "raw": [...]}.
    """
    build()
    cmd = [
        str(BIN / "llama-bench"),
        "-m",
        str(gguf),
        "-t",
        str(threads),
        "-p",
        ",".join(str(p) for p in prompts),
        "-n",
        str(n_gen),
        "-r",
        str(reps),
        "--load-mode",
        "none,mmap",
        "-o",
        "json",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"llama-bench failed ({proc.returncode}) on {gguf.name}:\n{proc.stderr[-3000:]}"
        )
    raw = json.loads(proc.stdout)
    out: dict = {"prefill": {}, "decode": None, "mean": {}, "load_mode": {}, "raw": raw}
    with open("/proc/loadavg") as f:
        out["load_average"] = float(f.read().split()[0])
    best: dict[str, float] = {}
    for r in raw:
        if r["n_gen"] == 0:
            test = f"prefill{r['n_prompt']}"
        elif r["n_prompt"] == 0:
            test = "decode"
        else:
            continue
        if max(r["samples_ts"]) > best.get(test, 0.0):  # the faster load mode counts
            best[test] = max(r["samples_ts"])
            out["mean"][test] = r["avg_ts"]
            out["load_mode"][test] = r.get("load_mode", "?")
    for test, tps in best.items():
        if test == "decode":
            out["decode"] = tps
        else:
            out["prefill"][test.removeprefix("prefill")] = tps
    return out


def tensor_bytes(gguf: Path) -> dict[str, int]:
    """Bytes of every tensor of a GGUF file, by name (read with the vendored gguf-py)."""
    sys.path.insert(0, str(SRC / "gguf-py"))
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf))
    return {t.name: int(t.n_bytes) for t in reader.tensors}


if __name__ == "__main__":
    build()
    say(f"built {', '.join(TARGETS)} in {BIN}")
