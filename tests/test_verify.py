"""`gemma4-ref verify` (gemma4_ref.verify.verify) on tiny checkpoints: pass, fail, no torch."""

from __future__ import annotations

import json
import re
import shutil
import sys

import pytest
from safetensors.torch import load_file, save_file

import gemma4_ref.verify as verify_mod
from gemma4_ref.verify import verify

CKPT = "e4b-bf16-sharded-causal"  # PLE + KV sharing, sharded, bf16
TABLE_ROW = re.compile(r"^\s+\d+\s+\d+\s+[\d.e+-]+\s+[\d.]+\s+[\d.e+-]+\s+(yes|NO)")


def _run(path, **kwargs) -> tuple[int, list[str]]:
    lines: list[str] = []
    rc = verify(str(path), out=lines.append, **kwargs)
    return rc, lines


def test_verify_passes_on_a_tiny_checkpoint(tiny):
    rc, lines = _run(tiny.path(CKPT), max_new_tokens=24)
    text = "\n".join(lines)
    assert rc == 0, text
    assert lines[-1].startswith("PASS"), text
    # progress, then the table: one row per prompt position (sliding window 16 + 24 = 40)
    assert any(line.startswith("[1/4]") for line in lines) and "[4/4]" in text
    assert "max|diff|" in text and "relative" in text
    assert sum(bool(TABLE_ROW.match(line)) for line in lines) == 40, text
    assert "greedy tokens: 24/24 identical" in text


def test_verify_multimodal_checkpoint_and_long_prompt(tiny):
    """A multimodal (model.language_model.*) checkpoint, and a prompt long enough that the
    table is abridged."""
    rc, lines = _run(tiny.path("31b-fp32-sharded-mm"), max_new_tokens=8, prompt_len=70)
    text = "\n".join(lines)
    assert rc == 0, text
    assert "towers not loaded" in text or "ForConditionalGeneration" in text
    rows = [line for line in lines if TABLE_ROW.match(line)]
    assert 16 <= len(rows) < 70 and any(line.strip() == "..." for line in lines), text


def test_verify_text_prompt(tiny):
    path = tiny.path(CKPT)
    model = tiny.ours(CKPT)
    if getattr(model, "tokenizer", None) is None:
        pytest.skip("no tokenizer in data/tokenizer to copy into the tiny checkpoint")
    prompt = "a b c"
    ids = model.tokenizer.encode(prompt)
    if max(ids) >= model.config.vocab_size:
        pytest.skip(f"'{prompt}' tokenises to ids beyond the tiny vocabulary: {ids}")
    rc, lines = _run(path, prompt=prompt, max_new_tokens=8)
    text = "\n".join(lines)
    assert rc == 0, text
    assert f"the prompt text, {len(ids) + 1} tokens" in text


def test_verify_fails_on_a_corrupted_copy(tiny, tmp_path, monkeypatch):
    """gemma4_ref reads a copy with one norm weight scaled by 1.01 while transformers reads the
    original: verify must notice (exit 1) and say where."""
    original = tiny.path(CKPT)
    corrupted = tmp_path / "corrupted"
    shutil.copytree(original, corrupted)
    name = "model.layers.3.post_feedforward_layernorm.weight"
    index = json.loads((corrupted / "model.safetensors.index.json").read_text())
    file = corrupted / index["weight_map"][name]
    tensors = load_file(file)
    tensors[name] = (tensors[name].float() * 1.01).to(tensors[name].dtype)
    save_file(tensors, file, metadata={"format": "pt"})

    load_reference = verify_mod._load_reference
    monkeypatch.setattr(
        verify_mod,
        "_load_reference",
        lambda folder, raw, torch_, transformers: load_reference(
            original, raw, torch_, transformers
        ),
    )
    rc, lines = _run(corrupted, max_new_tokens=16)
    text = "\n".join(lines)
    assert rc == 1, text
    assert lines[-1].startswith("FAIL") and "logits differ" in lines[-1], text
    assert "over tolerance" in text


def test_verify_without_transformers(tiny, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    rc, lines = _run(tiny.path(CKPT))
    assert rc == 2
    assert "pip install 'gemma4-ref[test]'" in "\n".join(lines)
