"""Reading safetensors checkpoints, single-file or sharded: memory-mapped, or into memory.

The safetensors format is an 8-byte little-endian header length, a JSON header that maps each
tensor name to its dtype, shape and byte range, then the raw bytes. Reading it by hand (rather
than through `safetensors.safe_open`) lets bfloat16 -- which NumPy lacks -- stay 16-bit, as a
`uint16` array that the kernels widen on the fly, and gives each tensor two ways in:

* :meth:`Checkpoint.array`, a zero-copy view of a read-only memory map. Nothing is read until a
  kernel touches it, so the resident size is about the size of the pages touched: right for
  tables read a row at a time (Per-Layer Embeddings) and for towers a text prompt never runs.
* :meth:`Checkpoint.read`, a private copy read from the file into the process's own memory. On
  the benchmark VM (`bench/README.md`) decode streams such copies at one steady speed, and the
  same bytes mapped from the page cache 1-30% slower, depending on that cache's history; so
  the decoder's weights are read this way when they fit (see `model.load_model`).
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .compressed import QuantizationConfig
from .errors import CheckpointError, ConfigError
from .int4 import QuantizedLinear, unpack_ref
from .linear import Linear, widen

#: safetensors dtype tag -> how NumPy stores it. bfloat16 is kept as its raw 16 bits.
_DTYPES: dict[str, np.dtype] = {
    "BF16": np.dtype(np.uint16),
    "F16": np.dtype(np.float16),
    "F32": np.dtype(np.float32),
    "F64": np.dtype(np.float64),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: its file, safetensors dtype tag, shape and absolute byte offset."""

    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int


def read_header(path: Path) -> tuple[dict[str, TensorInfo], int]:
    """Parse one safetensors file's header and check the file really holds every byte it lists.

    Returns the tensors by name and the file size. A truncated download fails here, naming the
    file, rather than later as a bus error inside a kernel.
    """
    if not path.is_file():
        raise CheckpointError(f"{path} is missing. Copy or re-download the checkpoint's shards.")
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(
                f"{path} is truncated ({size} bytes): not even a safetensors header. "
                "Re-download the file."
            )
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > 100_000_000:
            raise CheckpointError(
                f"{path} is truncated or not a safetensors file: its header claims {n} bytes but "
                f"the file has {size}. Re-download the file."
            )
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path} has a corrupt safetensors header ({e}).") from e
    base = 8 + n
    out: dict[str, TensorInfo] = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        dtype = meta.get("dtype")
        if dtype not in _DTYPES:
            raise CheckpointError(
                f"{path}: tensor '{name}' has dtype {dtype}, which this package does not read "
                f"(supported: {', '.join(_DTYPES)})."
            )
        shape = tuple(int(s) for s in meta["shape"])
        start, end = (int(x) for x in meta["data_offsets"])
        expected = int(np.prod(shape, dtype=np.int64)) * _DTYPES[dtype].itemsize
        if end - start != expected:
            raise CheckpointError(
                f"{path}: tensor '{name}' spans {end - start} bytes but shape {list(shape)} of "
                f"{dtype} needs {expected}. The file is corrupt; re-download it."
            )
        if base + end > size:
            raise CheckpointError(
                f"{path} is truncated: tensor '{name}' ends at byte {base + end} but the file "
                f"has only {size} bytes. Re-download the file."
            )
        out[name] = TensorInfo(name, path, dtype, shape, base + start, expected)
    return out, size


def _fresh_bytes(nbytes: int) -> np.ndarray:
    """`nbytes` of new, writable process memory.  # -> [nbytes] u8

    Large blocks are mapped with MAP_POPULATE, where the OS has it: the kernel then provides
    every page in one call. On the benchmark VM, one thread read a file into such pages at
    2.3-2.4 GB/s, and into pages faulted in one by one as the read went at 0.5-2.1 GB/s.
    """
    populate = getattr(mmap, "MAP_POPULATE", 0)
    if not populate or nbytes < (1 << 20):
        return np.empty(nbytes, np.uint8)
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | populate
    return np.frombuffer(mmap.mmap(-1, nbytes, flags=flags), np.uint8)


class Checkpoint:
    """All tensors of a checkpoint folder: memory-mapped NumPy views (:meth:`array`), created
    lazily, or private copies read from the files (:meth:`read`, :meth:`preload`)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.files = self._find_files()
        self.tensors: dict[str, TensorInfo] = {}
        self.total_bytes = 0
        for path in self.files:
            infos, size = read_header(path)
            self.total_bytes += size
            for name, info in infos.items():
                if name in self.tensors:
                    raise CheckpointError(
                        f"tensor '{name}' appears in both {self.tensors[name].file.name} and "
                        f"{path.name}; the shards overlap."
                    )
                self.tensors[name] = info
        self._check_index()
        self._maps: dict[Path, mmap.mmap] = {}
        self._preloaded: dict[str, np.ndarray] = {}

    def _find_files(self) -> list[Path]:
        if not self.folder.is_dir():
            raise CheckpointError(f"{self.folder} is not a folder. Pass a checkpoint folder.")
        index = self.folder / INDEX_NAME
        if index.is_file():
            try:
                self._index = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise CheckpointError(f"{index} is corrupt: no valid 'weight_map' ({e}).") from e
            return [self.folder / f for f in sorted(set(self._index.values()))]
        self._index = None
        single = self.folder / SINGLE_NAME
        if single.is_file():
            return [single]
        shards = sorted(self.folder.glob("model*.safetensors"))
        if shards:
            raise CheckpointError(
                f"{self.folder} holds sharded weights ({shards[0].name}, ...) but no {INDEX_NAME}. "
                "Copy the index file from the checkpoint's source."
            )
        raise CheckpointError(
            f"{self.folder} holds no {SINGLE_NAME} and no {INDEX_NAME}. Point --model at a "
            "Gemma 4 checkpoint folder."
        )

    def _check_index(self) -> None:
        if self._index is None:
            return
        for name, fname in self._index.items():
            info = self.tensors.get(name)
            if info is None or info.file.name != fname:
                raise CheckpointError(
                    f"{self.folder / INDEX_NAME} places tensor '{name}' in {fname}, but that file "
                    "does not hold it. The index and shards are from different downloads."
                )

    def text_prefix(self) -> str:
        """Where the text decoder's tensors start: `model.` in a text-only checkpoint,
        `model.language_model.` in a multimodal one."""
        for prefix in ("model.language_model.", "model."):
            if prefix + "embed_tokens.weight" in self.tensors:
                return prefix
        raise CheckpointError(
            f"{self.folder}: no embedding table found (looked for 'model.embed_tokens.weight' "
            "and 'model.language_model.embed_tokens.weight'). Is this a Gemma 4 checkpoint?"
        )

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise CheckpointError(
                f"tensor '{name}' is missing from the checkpoint in {self.folder}. The files are "
                "incomplete or from another model; re-download them."
            ) from None

    def _checked(self, name: str, shape: tuple[int, ...] | None) -> TensorInfo:
        info = self.info(name)
        if shape is not None and tuple(shape) != info.shape:
            raise CheckpointError(
                f"tensor '{name}' in {info.file.name} has shape {list(info.shape)}, but "
                f"config.json implies {list(shape)}. The config and weights do not match."
            )
        return info

    def preload(self, names: list[str], progress: Callable[[str], None] | None = None) -> None:
        """Read tensors `names` into memory now, a thread per core; :meth:`read` then hands
        each one out (once). Two threads read E2B's 4.5 GB in 1.3 s on the benchmark VM, one
        thread in 4-6 s: most of the time goes to the OS providing fresh pages, which the
        cores do side by side."""
        total = sum(self.info(n).nbytes for n in names)
        done, shown = 0, ""
        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            for name, arr in zip(names, pool.map(self._read_now, names), strict=True):
                self._preloaded[name] = arr
                done += arr.nbytes
                line = f"reading weights {done / 1e9:.1f}/{total / 1e9:.1f} GB"
                if progress is not None and line != shown:  # a line per 0.1 GB, not per tensor
                    progress(line)
                    shown = line

    def drop_preloaded(self) -> None:
        """Forget preloaded tensors nobody asked for (the loader's list is its best guess)."""
        self._preloaded.clear()

    def read(self, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """Tensor `name` in a new array of its own (bf16 as uint16), shape-checked."""
        self._checked(name, shape)
        arr = self._preloaded.pop(name, None)
        return self._read_now(name) if arr is None else arr

    def _read_now(self, name: str) -> np.ndarray:
        info = self.info(name)
        raw = _fresh_bytes(info.nbytes)
        dest = memoryview(raw)
        with info.file.open("rb", buffering=0) as f:
            f.seek(info.offset)
            done = 0
            while done < info.nbytes:  # one read() returns at most about 2 GB on Linux
                got = f.readinto(dest[done : done + (1 << 30)])
                if not got:
                    raise CheckpointError(
                        f"{info.file} ended inside tensor '{name}' (read {done} of "
                        f"{info.nbytes} bytes); it shrank since it was opened. Re-download it."
                    )
                done += got
        return raw.view(_DTYPES[info.dtype]).reshape(info.shape)

    def array(self, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """A read-only zero-copy view of tensor `name` (bf16 as uint16), shape-checked if asked."""
        info = self._checked(name, shape)
        mm = self._maps.get(info.file)
        if mm is None:
            with info.file.open("rb") as f:
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            self._maps[info.file] = mm
        dtype = _DTYPES[info.dtype]
        count = info.nbytes // dtype.itemsize
        return np.frombuffer(mm, dtype=dtype, count=count, offset=info.offset).reshape(info.shape)


# --- writing ------------------------------------------------------------------------------------

#: bytes the JSON header is padded to (with spaces), so that every tensor's data starts aligned
#: in the file, as the reference `safetensors` writer does
_HEADER_ALIGN = 8


def _safetensors_header(
    specs: list[tuple[str, str, tuple[int, ...]]], metadata: dict[str, str] | None
) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """The 8-byte length plus padded JSON header for tensors laid out back to back in `specs`
    order; also each tensor's (start, end) byte range relative to the start of the data."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    ranges: dict[str, tuple[int, int]] = {}
    pos = 0
    for name, tag, shape in specs:
        if tag not in _DTYPES:
            raise CheckpointError(f"tensor '{name}': unknown safetensors dtype tag {tag!r}.")
        if name in ranges or name == "__metadata__":
            raise CheckpointError(f"tensor '{name}' is listed twice (or is a reserved name).")
        nbytes = int(np.prod(shape, dtype=np.int64)) * _DTYPES[tag].itemsize
        ranges[name] = (pos, pos + nbytes)
        header[name] = {
            "dtype": tag,
            "shape": [int(s) for s in shape],
            "data_offsets": [pos, pos + nbytes],
        }
        pos += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % _HEADER_ALIGN)
    return struct.pack("<Q", len(text)) + text, ranges


class SafetensorsWriter:
    """Writes one safetensors file tensor by tensor, so that a file never has to sit in memory.

    The tensors' names, dtype tags and shapes are declared up front (the header comes first in
    the file and holds every byte offset); the data then follow in the same order through
    :meth:`write`. Use it as a context manager: leaving the block checks that every declared
    tensor was written.
    """

    def __init__(
        self,
        path: str | Path,
        specs: list[tuple[str, str, tuple[int, ...]]],
        metadata: dict[str, str] | None = None,
    ):
        self.path = Path(path)
        self.specs = [(name, tag, tuple(int(s) for s in shape)) for name, tag, shape in specs]
        head, self._ranges = _safetensors_header(self.specs, metadata)
        self._next = 0
        self._file = self.path.open("wb")
        self._file.write(head)
        self.nbytes = len(head)  # bytes written so far, header included

    def write(self, name: str, array: np.ndarray) -> None:
        """Append the next declared tensor. bf16 is passed as its uint16 bits (tag "BF16")."""
        if self._next >= len(self.specs):
            raise CheckpointError(f"{self.path}: tensor '{name}' was not declared.")
        want, tag, shape = self.specs[self._next]
        if name != want:
            raise CheckpointError(f"{self.path}: expected tensor '{want}' next, got '{name}'.")
        dtype = _DTYPES[tag]
        arr = np.asarray(array)
        if arr.dtype != dtype or tuple(arr.shape) != shape:
            raise CheckpointError(
                f"{self.path}: tensor '{name}' is {arr.dtype} {list(arr.shape)}, but was declared "
                f"{tag} {list(shape)} (stored as {dtype})."
            )
        # safetensors is little-endian; a contiguous copy is made only if the view is not.
        arr = np.ascontiguousarray(arr, dtype=dtype.newbyteorder("<"))
        self._file.write(arr.reshape(-1).view(np.uint8).data)
        self.nbytes += arr.nbytes
        self._next += 1

    def close(self) -> None:
        """Close the file; it is an error if some declared tensor was never written."""
        if self._file.closed:
            return
        self._file.close()
        if self._next != len(self.specs):
            raise CheckpointError(
                f"{self.path}: only {self._next} of {len(self.specs)} declared tensors were "
                f"written (next: '{self.specs[self._next][0]}'); the file is incomplete."
            )

    def __enter__(self) -> SafetensorsWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:  # the error in flight is the one to report, not the incomplete file
            self._file.close()


def write_safetensors(
    path: str | Path,
    tensors: dict[str, tuple[str, np.ndarray]],
    metadata: dict[str, str] | None = None,
) -> int:
    """Write a safetensors file from `{name: (dtype tag, array)}`; returns the file size.

    The tag is the safetensors dtype ("BF16", "F16", "F32", "I32", "I64", ...); bf16 arrays are
    their raw bits as uint16, as :class:`Checkpoint` reads them, so a bf16 tensor round-trips
    bit for bit with no float conversion.
    """
    specs = [(name, tag, tuple(arr.shape)) for name, (tag, arr) in tensors.items()]
    with SafetensorsWriter(path, specs, metadata) as w:
        for name, (_tag, arr) in tensors.items():
            w.write(name, arr)
    return w.nbytes


# --- typed access by name ------------------------------------------------------------------------

#: safetensors dtype -> the tag `linear.widen` reads
DTYPE_TAGS = {"BF16": "bf16", "F16": "f16", "F32": "f32"}


class TensorSource:
    """Fetches a checkpoint's tensors by their name below `prefix` (the decoder's
    `model.language_model.`, the towers' `model.`), checking shape and dtype; linear weights
    come back as :class:`Linear` or, when stored packed, :class:`QuantizedLinear`.

    With `resident`, tensors are read into memory (:meth:`Checkpoint.read`), except those asked
    for with `mapped=True`; otherwise every tensor is a view of the memory map.
    """

    def __init__(
        self,
        ckpt: Checkpoint,
        prefix: str,
        quant: QuantizationConfig | None,
        resident: bool = False,
    ):
        self.ckpt = ckpt
        self.prefix = prefix
        self.quant = quant
        self.resident = resident

    def _full(self, name: str) -> str:
        return self.prefix + name

    def _get(self, full: str, shape: tuple[int, ...] | None, mapped: bool = False) -> np.ndarray:
        if self.resident and not mapped:
            return self.ckpt.read(full, shape)
        return self.ckpt.array(full, shape)

    def has(self, name: str) -> bool:
        return self._full(name) in self.ckpt

    def raw(
        self, name: str, shape: tuple[int, ...], mapped: bool = False
    ) -> tuple[np.ndarray, str]:
        """A dense tensor and its dtype tag; `mapped` keeps it a view of the memory map."""
        full = self._full(name)
        arr = self._get(full, shape, mapped)
        tag = DTYPE_TAGS.get(self.ckpt.info(full).dtype)
        if tag is None:
            raise CheckpointError(
                f"tensor '{full}' is stored as {self.ckpt.info(full).dtype}; a dense Gemma 4 "
                "weight must be BF16, F16 or F32."
            )
        return arr, tag

    def linear(self, name: str, out_f: int, in_f: int) -> Linear | QuantizedLinear:
        full = self._full(name)
        if full + ".weight_packed" in self.ckpt:
            return self._quantized(full, out_f, in_f)
        arr, tag = self.raw(name + ".weight", (out_f, in_f))
        return Linear(arr, tag, full)

    def _quantized(self, full: str, out_f: int, in_f: int) -> QuantizedLinear:
        """A compressed-tensors packed weight, left packed."""
        ck = self.ckpt
        if self.quant is None:
            raise ConfigError(
                f"tensor '{full}.weight_packed' is quantized, but {ck.folder / 'config.json'} has "
                "no quantization_config to say how. Copy the checkpoint's config.json."
            )
        args = self.quant.scheme_for(full)
        if args is None:
            raise ConfigError(
                f"{self.quant.source}: '{full}' is stored packed, but no config group of "
                "quantization_config targets it (or its ignore list names it)."
            )
        group = args.group_size or in_f
        bits = args.num_bits
        if in_f % group or (in_f * bits) % 32:
            raise ConfigError(
                f"{self.quant.source}: '{full}' has {in_f} inputs, which group size {group} "
                f"and {bits}-bit packing do not divide; this layout is not supported."
            )
        packed = self._get(full + ".weight_packed", (out_f, in_f * bits // 32))
        if ck.info(full + ".weight_packed").dtype != "I32":
            raise CheckpointError(f"tensor '{full}.weight_packed' must be int32.")
        if full + ".weight_shape" in ck:
            shape = [int(v) for v in ck.array(full + ".weight_shape")]
            if shape != [out_f, in_f]:
                raise CheckpointError(
                    f"tensor '{full}.weight_shape' says {shape}, but config.json implies "
                    f"{[out_f, in_f]}. The config and weights do not match."
                )
        scale = self._get(full + ".weight_scale", (out_f, in_f // group))
        scale_dtype = DTYPE_TAGS.get(ck.info(full + ".weight_scale").dtype)
        if scale_dtype is None:
            raise CheckpointError(f"tensor '{full}.weight_scale' must be BF16, F16 or F32.")
        if scale_dtype == "f16":  # the kernels read bf16 bits or float32
            scale = scale.astype(np.float32)
        zero = None
        if not args.symmetric:
            rows = -(-out_f * bits // 32)
            zp = ck.array(full + ".weight_zero_point", (rows, in_f // group))
            zero = unpack_ref(np.ascontiguousarray(zp), bits, out_f, axis=0)
        return QuantizedLinear(packed, scale, scale_dtype, zero, args, (out_f, in_f), full)

    def vector(self, name: str, size: int) -> np.ndarray:
        """Small tensors (norm weights, scales) are widened once to float32."""
        arr, tag = self.raw(name, (size,))
        return np.ascontiguousarray(widen(arr, tag))
