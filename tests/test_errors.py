"""Bad input gets a clear error that names the file, tensor or field, and says what to do."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

import gemma4_ref
from gemma4_ref import CheckpointError, ConfigError, InputError

DEFAULT = gemma4_ref.DEFAULT_MODEL


@pytest.fixture()
def ckpt(tmp_path: Path) -> Path:
    """A private copy of the embedded model; files are copied only when a test edits them."""
    d = tmp_path / "ckpt"
    d.mkdir()
    for f in DEFAULT.iterdir():
        (d / f.name).symlink_to(f)
    return d


def _own(path: Path) -> Path:
    """Replace a symlink by a real copy so the test can edit it."""
    target = path.resolve()
    path.unlink()
    shutil.copy(target, path)
    return path


def _edit_config(d: Path, **changes) -> None:
    cfg = json.loads(_own(d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))


@pytest.fixture(scope="module")
def model():
    return gemma4_ref.load_model()


SHARD = "model-00002-of-00003.safetensors"
INDEX = "model.safetensors.index.json"


def _single_file(d: Path) -> Path:
    """Turn the sharded copy into a single-file checkpoint (model.safetensors, no index)."""
    tensors = {}
    for shard in sorted(d.glob("model-*.safetensors")):
        tensors.update(load_file(shard))
        shard.unlink()
    (d / INDEX).unlink()
    save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})
    return d / "model.safetensors"


def test_missing_shard(ckpt):
    (ckpt / SHARD).unlink()
    with pytest.raises(CheckpointError, match=rf"{SHARD} is missing"):
        gemma4_ref.load_model(ckpt)


def test_missing_single_weights_file(ckpt):
    _single_file(ckpt).unlink()
    with pytest.raises(CheckpointError, match=r"no model\.safetensors"):
        gemma4_ref.load_model(ckpt)


def test_shards_without_index(ckpt):
    (ckpt / INDEX).unlink()
    with pytest.raises(CheckpointError, match=rf"no {INDEX}"):
        gemma4_ref.load_model(ckpt)


def test_truncated_weights_file(ckpt):
    data = (ckpt / SHARD).read_bytes()
    (ckpt / SHARD).unlink()
    (ckpt / SHARD).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"{SHARD} is truncated.*Re-download"):
        gemma4_ref.load_model(ckpt)


def test_truncated_header(ckpt):
    (ckpt / SHARD).unlink()
    (ckpt / SHARD).write_bytes(b"\x10\x00")
    with pytest.raises(CheckpointError, match="truncated"):
        gemma4_ref.load_model(ckpt)


def test_index_names_a_file_that_is_not_there(ckpt):
    index = json.loads(_own(ckpt / INDEX).read_text())
    index["weight_map"]["model.norm.weight"] = "model-00009-of-00009.safetensors"
    (ckpt / INDEX).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"model-00009-of-00009\.safetensors is missing"):
        gemma4_ref.load_model(ckpt)


def test_missing_tensor(ckpt):
    path = _single_file(ckpt)
    tensors = load_file(path)
    name = "model.layers.3.self_attn.q_norm.weight"
    del tensors[name]
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=rf"tensor '{name}' is missing"):
        gemma4_ref.load_model(ckpt)


def test_shape_mismatch(ckpt):
    _edit_config(ckpt, intermediate_size=700)
    with pytest.raises(CheckpointError, match=r"mlp\.gate_proj\.weight.*shape.*config\.json"):
        gemma4_ref.load_model(ckpt)


@pytest.mark.parametrize(
    "change,field",
    [
        ({"hidden_activation": "relu"}, "hidden_activation"),
        ({"attention_bias": True}, "attention_bias"),
        ({"use_bidirectional_attention": "all"}, "use_bidirectional_attention"),
        ({"layer_types": ["sliding_attention"] * 3}, "layer_types"),
        ({"hidden_size": "256"}, "hidden_size"),
        ({"model_type": "llama"}, "model_type"),
        (
            {"rope_parameters": {"sliding_attention": {"rope_type": "yarn", "rope_theta": 1.0}}},
            "rope_type",
        ),
        ({"quantization_config": {"quant_method": "gptq", "format": "gptq"}}, "quant"),
    ],
)
def test_unsupported_config_value(ckpt, change, field):
    _edit_config(ckpt, **change)
    with pytest.raises(ConfigError, match=field) as e:
        gemma4_ref.load_model(ckpt)
    assert "config.json" in str(e.value)


def test_corrupt_config_json(ckpt):
    _own(ckpt / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"config\.json is not valid JSON"):
        gemma4_ref.load_model(ckpt)


def test_not_a_folder(tmp_path):
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        gemma4_ref.load_model(tmp_path / "nope")


def test_ids_out_of_range(model):
    vocab = model.config.vocab_size
    with pytest.raises(InputError, match=rf"token id {vocab} at position 1 is out of range"):
        model.forward([2, vocab])
    with pytest.raises(InputError, match="out of range"):
        model.generate([2, -1], max_new_tokens=1)


def test_empty_prompt(model):
    with pytest.raises(InputError, match="prompt is empty"):
        model.forward([])
    with pytest.raises(InputError, match="prompt is empty"):
        model.generate(np.array([], dtype=np.int64), max_new_tokens=3)


def test_prompt_longer_than_max_positions(ckpt):
    _edit_config(ckpt, max_position_embeddings=16)
    m = gemma4_ref.load_model(ckpt)
    with pytest.raises(InputError, match="max_position_embeddings=16"):
        m.forward([2] + [5] * 16)
    assert m.forward([2] + [5] * 15).shape == (16, m.config.vocab_size)


def test_non_integer_ids(model):
    with pytest.raises(InputError, match="integers"):
        model.forward(np.array([2.0, 3.5]))


def test_bad_sampling_arguments(model):
    with pytest.raises(InputError, match="top_p"):
        model.generate([2, 5], max_new_tokens=2, temperature=1.0, top_p=1.5)
    with pytest.raises(InputError, match="temperature"):
        model.generate([2, 5], max_new_tokens=2, temperature=-1.0)


def test_cli_reports_errors_without_traceback(capsys, tmp_path):
    from gemma4_ref.cli import main

    rc = main(["generate", "--model", str(tmp_path), "--prompt", "hi"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "error:" in err and "Traceback" not in err
