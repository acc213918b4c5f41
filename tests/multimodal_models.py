"""Tiny random multimodal Gemma 4 checkpoints for whole-model parity: text + images + audio.

Two checkpoints, made by transformers itself and saved in fp32 with a 4096-id tokenizer:

==============  =============================================================================
name            what it holds
==============  =============================================================================
e2b-audio       ``Gemma4ForConditionalGeneration``: the E2B-like text decoder of
                ``tiny_models`` (PLE, KV sharing, causal over every soft token), the vision
                tower of ``vision_models`` and the "e2b" audio conformer of ``audio_models``
                (clip bounds and logit caps that bite)
unified         ``Gemma4UnifiedForConditionalGeneration``: the 12B-like decoder and real-size
                front end of ``unified_models`` (48-px patches, 640-sample audio frames), with
                ``use_bidirectional_attention: "vision"``: an image is one block, seen both
                ways on every layer even though it is longer than the sliding window (16)
==============  =============================================================================

Seven unused control tokens of the project tokenizer are renamed to the multimodal tokens
(ids 5..11), and ``config.json`` names those ids, as ``vision_models`` does for images.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from audio_models import AUDIO_VARIANTS, tune_audio_
from tiny_models import GENERATION_CONFIG, TOKENIZER_DIR, load_reference, randomise_
from unified_models import AUDIO, TEXT, VISION
from vision_models import VISION_VARIANTS, tune_vision_

VOCAB = 4096
TOKENS = {  # tokenizer name -> (new name, config.json field)
    "<unused0>": ("<|image>", "boi_token_id"),
    "<unused1>": ("<|image|>", "image_token_id"),
    "<unused2>": ("<image|>", "eoi_token_id"),
    "<unused3>": ("<|audio>", "boa_token_id"),
    "<unused4>": ("<|audio|>", "audio_token_id"),
    "<unused5>": ("<audio|>", "eoa_token_index"),
    "<unused6>": ("<|video|>", "video_token_id"),
}
BOI, IMAGE, EOI, BOA, AUDIO_ID, EOA, VIDEO = range(5, 12)
MAX_SOFT_TOKENS = 70
MAX_NEW_TOKENS = 40
SEEDS = {"e2b-audio": 515, "unified": 616}


def token_ids() -> dict[str, int]:
    return {field: 5 + i for i, (_, field) in enumerate(TOKENS.values())}


def build(name: str):
    """The randomised fp32 model of a checkpoint (eager attention)."""
    import transformers

    if name == "e2b-audio":
        from tiny_models import _full_config

        variant = dataclasses.replace(
            VISION_VARIANTS["e2b-vision"], audio=AUDIO_VARIANTS["e2b"].audio
        )
        config = _full_config(variant)
        cls = transformers.Gemma4ForConditionalGeneration
    else:
        config = transformers.Gemma4UnifiedConfig(
            text_config=transformers.Gemma4UnifiedTextConfig(**{**TEXT, "vocab_size": VOCAB}),
            vision_config=transformers.Gemma4UnifiedVisionConfig(**VISION),
            audio_config=transformers.Gemma4UnifiedAudioConfig(**AUDIO),
        )
        cls = transformers.Gemma4UnifiedForConditionalGeneration
    for field, value in token_ids().items():
        setattr(config, field, value)
    config._attn_implementation = "eager"
    model = cls(config)
    randomise_(model, SEEDS[name])
    rng = np.random.default_rng(SEEDS[name] + 1)
    tune_vision_(model, rng)
    tune_audio_(model, rng)
    return model.eval()


def _write_tokenizer(path: Path) -> None:
    rename = {old: new for old, (new, _) in TOKENS.items()}
    tok = json.loads((TOKENIZER_DIR / "tokenizer.json").read_text())
    for entry in tok["added_tokens"]:
        if entry["content"] in rename:
            assert entry["id"] == token_ids()[TOKENS[entry["content"]][1]]
            entry["content"] = rename[entry["content"]]
    tok["model"]["vocab"] = {rename.get(k, k): v for k, v in tok["model"]["vocab"].items()}
    (path / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False))
    text = (TOKENIZER_DIR / "tokenizer_config.json").read_text()
    for old, new in rename.items():
        text = text.replace(f'"{old}"', json.dumps(new))
    (path / "tokenizer_config.json").write_text(text)
    shutil.copy2(TOKENIZER_DIR / "chat_template.jinja", path / "chat_template.jinja")


def save(name: str, path: Path) -> Path:
    """Save a checkpoint with save_pretrained, plus generation config and tokenizer."""
    path.mkdir(parents=True, exist_ok=True)
    build(name).save_pretrained(path)
    (path / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG, indent=2) + "\n")
    _write_tokenizer(path)
    return path


class MultimodalStore:
    """Builds each checkpoint, our model and transformers' model, at most once per session."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._cache: dict[str, Any] = {}

    def _once(self, key: str, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def path(self, name: str) -> Path:
        return self._once("path:" + name, lambda: save(name, self.root / name))

    def reference(self, name: str):
        return self._once("ref:" + name, lambda: load_reference(self.path(name)))

    def ours(self, name: str):
        import gemma4_ref

        return self._once("ours:" + name, lambda: gemma4_ref.load_model(self.path(name)))
