"""Weights read into memory and weights mapped from the file are the same weights.

`load_model(weights="memory")` reads the decoder's tensors with `Checkpoint.read` (a thread per
core, `Checkpoint.preload`); `weights="mmap"` hands out views of the memory map. The first is
what decode runs on by default; the second is what a model larger than RAM needs. Both must give
bit-identical results, and the choice `"auto"` makes must follow the memory the OS reports.
"""

from pathlib import Path

import numpy as np
import pytest

import gemma4_ref
from gemma4_ref import CheckpointError, InputError
from gemma4_ref import model as model_module
from gemma4_ref.checkpoint import Checkpoint
from gemma4_ref.cli import main

DEFAULT = gemma4_ref.DEFAULT_MODEL


def test_read_equals_the_mapped_view():
    ckpt = Checkpoint(DEFAULT)
    for name in ckpt.tensors:
        mapped, read = ckpt.array(name), ckpt.read(name)
        assert read.dtype == mapped.dtype and read.shape == mapped.shape, name
        assert np.array_equal(read.view(np.uint8), mapped.view(np.uint8)), name
        assert read.flags.writeable and not np.shares_memory(read, mapped), name


def test_preload_hands_each_tensor_out_once():
    ckpt = Checkpoint(DEFAULT)
    names = sorted(ckpt.tensors)[:5]
    lines: list[str] = []
    ckpt.preload(names, lines.append)
    total = sum(ckpt.info(n).nbytes for n in names) / 1e9
    assert lines and len(set(lines)) == len(lines)  # progress changes with every line it shows
    assert lines[-1] == f"reading weights {total:.1f}/{total:.1f} GB"
    first = ckpt.read(names[0])
    again = ckpt.read(names[0])  # no longer preloaded: read afresh, the same bytes
    assert first is not again and np.array_equal(first, again)
    ckpt.drop_preloaded()
    assert not ckpt._preloaded


def test_a_file_that_shrinks_after_opening(tmp_path: Path):
    d = tmp_path / "ckpt"
    d.mkdir()
    for f in DEFAULT.iterdir():
        (d / f.name).write_bytes(f.read_bytes())
    ckpt = Checkpoint(d)  # headers checked against the full files
    info = max(ckpt.tensors.values(), key=lambda i: i.offset)
    with info.file.open("r+b") as f:
        f.truncate(info.offset + info.nbytes // 2)
    with pytest.raises(CheckpointError, match=rf"{info.file.name} ended inside tensor"):
        ckpt.read(info.name)


def _greedy_logits(model) -> np.ndarray:
    """Logits of a prefill and five cached greedy steps.  # -> [6, vocab]"""
    cache = model.new_cache()
    out = [model.step([2, 17, 301, 42, 9], cache)[-1]]
    for _ in range(5):
        out.append(model.step([int(np.argmax(out[-1]))], cache)[-1])
    return np.stack(out)


def test_memory_and_mmap_give_identical_logits():
    in_memory = gemma4_ref.load_model(weights="memory")
    mapped = gemma4_ref.load_model(weights="mmap")
    assert in_memory.resident and not mapped.resident
    assert in_memory.layers[0].q_proj.weight.flags.writeable  # a copy of its own
    assert not mapped.layers[0].q_proj.weight.flags.writeable  # the read-only map
    assert np.array_equal(_greedy_logits(in_memory), _greedy_logits(mapped))


def test_packed_weights_read_into_memory(ct_models):
    """The compressed-tensors path (packed nibbles, scales) reads the same bytes as it maps."""
    path = ct_models.path("e2b-w4g32-bf16")
    in_memory = gemma4_ref.load_model(path, weights="memory")
    mapped = gemma4_ref.load_model(path, weights="mmap")
    assert in_memory.layers[0].q_proj.packed.flags.writeable
    assert np.array_equal(_greedy_logits(in_memory), _greedy_logits(mapped))


@pytest.mark.parametrize(
    "available,resident", [(None, False), (1000, False), (1 << 40, True)], ids=str
)
def test_auto_reads_into_memory_only_when_it_fits(monkeypatch, available, resident):
    monkeypatch.setattr(model_module, "available_memory", lambda: available)
    assert gemma4_ref.load_model(weights="auto").resident is resident


def test_unknown_weights_mode():
    with pytest.raises(InputError, match=r"weights='disk'.*auto, memory, mmap"):
        gemma4_ref.load_model(weights="disk")


def test_cli_weights_flag(capsys):
    rc = main(["generate", "--prompt", "ROMEO.", "--max-new-tokens", "3", "--weights", "mmap"])
    assert rc == 0 and "(memory-mapped)" in capsys.readouterr().err
