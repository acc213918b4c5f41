"""`gemma4-ref verify`: check this implementation against Hugging Face transformers.

Hugging Face transformers is the specification this package follows. `verify` loads one
checkpoint folder twice, here and in transformers (fp32, eager attention), and feeds both the
same prompt:

1. **prefill**: the logits of every prompt position are compared; the table shows the largest
   absolute difference per position and the same figure relative to the largest reference logit;
2. **greedy decoding**: `max_new_tokens` tokens at temperature 0, through each side's KV cache,
   compared token for token.

The run passes when the relative logit difference is at most 1e-4 and every greedy token is
equal. A bf16 checkpoint is upcast exactly to fp32 on both sides, so the two see the same
weights and only the order of floating-point operations differs.

The prompt is the tokenised `prompt` text when one is given and the folder has a tokenizer;
otherwise it is a fixed pseudo-random sequence of ids (BOS first) longer than the sliding window,
so that windowed attention and the window-sized cache are exercised.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError

REL_TOL = 1e-4  # pass: max|ours - ref| <= REL_TOL * max|ref| over all prompt logits
INSTALL_HINT = "pip install 'gemma4-ref[test]'"

# transformers classes by the checkpoint's model_type: (text-only class, multimodal class)
_CLASSES = {
    "gemma4_text": ("Gemma4ForCausalLM", None),
    "gemma4": ("Gemma4ForCausalLM", "Gemma4ForConditionalGeneration"),
    "gemma4_unified_text": ("Gemma4UnifiedForCausalLM", None),
    "gemma4_unified": ("Gemma4UnifiedForCausalLM", "Gemma4UnifiedForConditionalGeneration"),
}
_ARCH_TO_MODEL_TYPE = {
    "Gemma4ForCausalLM": "gemma4_text",
    "Gemma4ForConditionalGeneration": "gemma4",
    "Gemma4UnifiedForCausalLM": "gemma4_unified_text",
    "Gemma4UnifiedForConditionalGeneration": "gemma4_unified",
}
# first ids of the multimodal placeholder range (<|image>, <|audio>, <|image|>, ...): a random
# prompt stays below it, since those ids mean "insert an image/audio here" to the wrapper model
_FIRST_MULTIMODAL_ID = 255_999


def _import_reference():
    """Import torch and transformers, or return None if either is missing or too old."""
    try:
        import torch
        import transformers
    except ImportError:
        return None
    if getattr(transformers, "Gemma4ForCausalLM", None) is None:
        return None
    return torch, transformers


def _model_type(raw: dict[str, Any]) -> str:
    """The checkpoint's model_type, from `architectures` first, then `model_type`."""
    for arch in raw.get("architectures") or []:
        if arch in _ARCH_TO_MODEL_TYPE:
            return _ARCH_TO_MODEL_TYPE[arch]
    model_type = raw.get("model_type", "gemma4_text")
    if model_type not in _CLASSES:
        raise InputError(f"config.json: model_type '{model_type}' is not a Gemma 4 model.")
    return model_type


def _text_fields(raw: dict[str, Any]) -> dict[str, Any]:
    """The decoder's config fields (under `text_config` for a multimodal checkpoint)."""
    text = raw.get("text_config")
    return text if isinstance(text, dict) else raw


def _ids_list(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(value)] if isinstance(value, int) else [int(v) for v in value]


def _load_reference(folder: Path, raw: dict[str, Any], torch, transformers):
    """Load the transformers model for `folder` in fp32 with eager attention.

    A multimodal checkpoint (`model.language_model.*` next to vision/audio towers) is loaded into
    the text-only class with its decoder keys mapped to `model.*`, so the towers are never built:
    for text input the wrapper runs exactly this decoder. If any decoder weight did not load that
    way, the full multimodal class is used instead.
    # -> (torch model, description)
    """
    model_type = _model_type(raw)
    text_cls_name, mm_cls_name = _CLASSES[model_type]
    common = {"dtype": torch.float32, "attn_implementation": "eager"}
    q = raw.get("quantization_config")
    if q is not None and q.get("quant_method") == "compressed-tensors":
        # Decompress while loading, in the scale's dtype, as compressed-tensors defines it:
        # bf16 scales give bf16(q*s). transformers' default path would decompress later in the
        # model's fp32 and get the unrounded product instead.
        common["quantization_config"] = transformers.CompressedTensorsConfig.from_dict(
            {**q, "dequantize": True}
        )
    if mm_cls_name is None:
        cls = getattr(transformers, text_cls_name)
        return cls.from_pretrained(folder, **common), text_cls_name

    text_cls = getattr(transformers, text_cls_name)
    full_config = transformers.AutoConfig.from_pretrained(folder)
    model, info = text_cls.from_pretrained(
        folder,
        config=full_config.get_text_config(),
        key_mapping={r"^model\.language_model\.": "model."},
        output_loading_info=True,
        **common,
    )
    missing = [k for k in info.get("missing_keys", []) if not k.startswith("lm_head")]
    if not missing:
        return model, f"{text_cls_name} (decoder of {mm_cls_name}; towers not loaded)"
    del model
    cls = getattr(transformers, mm_cls_name)
    return cls.from_pretrained(folder, **common), mm_cls_name


def _random_prompt(length: int, vocab: int, bos: int, avoid: set[int]) -> list[int]:
    """BOS followed by fixed pseudo-random ordinary ids (no special, EOS or multimodal ids)."""
    rng = np.random.default_rng(20_240_607)
    high = min(vocab, _FIRST_MULTIMODAL_ID)
    ids = [bos]
    while len(ids) < length:
        t = int(rng.integers(5, high))
        if t not in avoid:
            ids.append(t)
    return ids


def _fmt_row(pos: int, token: int, diff: float, ref_max: float, agree: bool) -> str:
    rel = diff / ref_max if ref_max > 0 else float("inf")
    flag = "" if rel <= REL_TOL else "  <-- over tolerance"
    return (
        f"  {pos:>6d}  {token:>8d}  {diff:>11.3e}  {ref_max:>9.3f}  {rel:>9.2e}  "
        f"{'yes' if agree else 'NO':>6s}{flag}"
    )


def _print_table(
    ids: Sequence[int], diff_rows: np.ndarray, ref_max_rows: np.ndarray, agree: np.ndarray, out
) -> None:
    """Per-position table; long prompts show the first, last and worst positions."""
    S = len(ids)
    header = ("pos", 6), ("token", 8), ("max|diff|", 11), ("max|ref|", 9), ("relative", 9)
    out("  " + "  ".join(f"{name:>{width}s}" for name, width in header) + f"  {'argmax':>6s}")
    if S <= 48:
        rows = list(range(S))
    else:
        worst = np.argsort(-diff_rows / np.maximum(ref_max_rows, 1e-30))[:8]
        rows = sorted(set(range(8)) | set(range(S - 8, S)) | {int(i) for i in worst})
    last = -1
    for p in rows:
        if p != last + 1:
            out(f"  {'...':>6s}")
        out(_fmt_row(p, int(ids[p]), float(diff_rows[p]), float(ref_max_rows[p]), bool(agree[p])))
        last = p
    if last != S - 1:
        out(f"  {'...':>6s}")


def verify(
    model_dir: str | None,
    prompt: str | None = None,
    max_new_tokens: int = 32,
    prompt_len: int = 0,
    out: Callable[[str], None] = print,
) -> int:
    """Compare gemma4_ref with transformers on one checkpoint folder and print a report.

    Args:
        model_dir: the checkpoint folder (config.json + safetensors); None = the embedded default.
        prompt: text to tokenise with the folder's tokenizer (BOS is put first); without a
            prompt or a tokenizer, pseudo-random ids are used.
        max_new_tokens: how many greedy tokens to compare.
        prompt_len: length of the pseudo-random prompt; 0 = the sliding window plus 24, so the
            prompt is longer than the window.
        out: where the report lines go.

    Returns:
        The exit code: 0 pass, 1 fail (logits differ by more than 1e-4 relative, or a greedy
        token differs), 2 transformers/torch not installed.
    """
    ref_libs = _import_reference()
    if ref_libs is None:
        out(
            "verify compares against Hugging Face transformers (>= 5.24, with Gemma 4) and torch, "
            f"which are not installed (or too old). Install them with: {INSTALL_HINT}"
        )
        return 2
    torch, transformers = ref_libs
    from .model import load_model

    # 1. this implementation
    t0 = time.perf_counter()
    out(f"[1/4] loading {model_dir or 'the embedded default model'} with gemma4_ref ...")
    model = load_model(model_dir)
    folder = Path(model.path)
    raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    text = _text_fields(raw)
    vocab = int(model.config.vocab_size)
    window = int(text.get("sliding_window") or 0)
    out(f"      done in {time.perf_counter() - t0:.1f} s ({folder})")

    # the prompt
    bos = int(text.get("bos_token_id", raw.get("bos_token_id", 2)) or 2)
    gen_path = folder / "generation_config.json"
    gen = json.loads(gen_path.read_text(encoding="utf-8")) if gen_path.is_file() else {}
    eos = set(_ids_list(gen.get("eos_token_id"))) | set(_ids_list(text.get("eos_token_id")))
    tokenizer = getattr(model, "tokenizer", None)
    if prompt is not None and tokenizer is not None:
        ids = [int(t) for t in tokenizer.encode(prompt)]
        if not ids or ids[0] != bos:
            ids = [bos, *ids]
        source = f"the prompt text, {len(ids)} tokens (BOS first)"
    else:
        if prompt is not None:
            out(f"      note: {folder} has no tokenizer.json, so pseudo-random ids are used")
        length = prompt_len if prompt_len > 0 else window + 24
        ids = _random_prompt(max(length, 2), vocab, bos, eos | {bos})
        source = f"{len(ids)} pseudo-random ids (BOS first; sliding window {window})"
    too_big = [t for t in ids if not 0 <= t < vocab]
    if too_big:
        raise InputError(
            f"token id {too_big[0]} is outside this model's vocabulary (0..{vocab - 1}); the "
            "tokenizer does not belong to this checkpoint."
        )
    out(f"      prompt: {source}")

    # 2. the reference
    t0 = time.perf_counter()
    out("[2/4] loading the same folder in transformers (fp32, eager attention) ...")
    hf_logging = transformers.utils.logging
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # no load reports or generation-flag warnings in the report
    hf_logging.disable_progress_bar()
    try:
        ref_model, how = _load_reference(folder, raw, torch, transformers)
        ref_model.eval()
        out(f"      {how}, done in {time.perf_counter() - t0:.1f} s")

        # 3. prefill logits
        t0 = time.perf_counter()
        out(f"[3/4] prefill of {len(ids)} tokens on both sides ...")
        ours = np.asarray(
            model.forward(np.asarray(ids, dtype=np.int64)), dtype=np.float64
        )  # [S, V]
        input_ids = torch.tensor([ids], dtype=torch.long)  # [1, S]
        with torch.no_grad():
            ref = ref_model(input_ids=input_ids).logits[0].double().numpy()  # [S, V]
        out(f"      done in {time.perf_counter() - t0:.1f} s")

        # 4. greedy decoding
        t0 = time.perf_counter()
        out(f"[4/4] greedy decoding of {max_new_tokens} tokens on both sides ...")
        ours_tokens = [
            int(t) for t in model.generate(ids, max_new_tokens=max_new_tokens, temperature=0.0)
        ]
        with torch.no_grad():
            seq = ref_model.generate(
                input_ids,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=int(text.get("pad_token_id", 0) or 0),
            )  # [1, S + n]
        ref_tokens = [int(t) for t in seq[0, len(ids) :].tolist()]
        out(f"      done in {time.perf_counter() - t0:.1f} s")
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()

    # report: logits
    if ours.shape != ref.shape:
        out(f"FAIL: logits have shape {ours.shape} here but {ref.shape} in transformers")
        return 1
    diff = np.abs(ours - ref)  # [S, V]
    diff_rows = diff.max(axis=-1)  # [S]
    ref_max_rows = np.abs(ref).max(axis=-1)  # [S]
    agree = ours.argmax(-1) == ref.argmax(-1)  # [S]
    scale = float(np.abs(ref).max())
    rel = float(diff.max()) / scale if scale > 0 else float("inf")
    out("")
    out("prefill logits, per position (relative = max|diff| / max|ref| of that position):")
    _print_table(ids, diff_rows, ref_max_rows, agree, out)
    worst = int(diff_rows.argmax())
    out(
        f"overall: max|diff| = {diff.max():.3e} at position {worst}, max|ref| = {scale:.3f}, "
        f"relative {rel:.2e} (tolerance {REL_TOL:.0e}); argmax agrees at "
        f"{int(agree.sum())}/{len(ids)} positions"
    )

    # report: greedy tokens
    n = min(len(ours_tokens), len(ref_tokens))
    first = next((i for i in range(n) if ours_tokens[i] != ref_tokens[i]), None)
    if first is None and len(ours_tokens) != len(ref_tokens):
        first = n
    out("")
    if first is None:
        out(f"greedy tokens: {len(ref_tokens)}/{len(ref_tokens)} identical")
    else:
        out(
            f"greedy tokens: first divergence at new token {first} (position {len(ids) + first}); "
            f"{first}/{max(len(ours_tokens), len(ref_tokens))} identical before it"
        )
        out(f"  gemma4_ref:   {ours_tokens[first : first + 8]} ({len(ours_tokens)} tokens)")
        out(f"  transformers: {ref_tokens[first : first + 8]} ({len(ref_tokens)} tokens)")
    if len(ref_tokens) < max_new_tokens:
        out(f"  (transformers stopped at an EOS id after {len(ref_tokens)} tokens)")

    ok_logits = rel <= REL_TOL
    ok_tokens = first is None
    out("")
    if ok_logits and ok_tokens:
        out(
            f"PASS: logits within {REL_TOL:.0e} relative ({rel:.2e}) and "
            f"{len(ref_tokens)}/{len(ref_tokens)} greedy tokens identical"
        )
        return 0
    reasons = []
    if not ok_logits:
        reasons.append(f"logits differ by {rel:.2e} relative (> {REL_TOL:.0e}) at position {worst}")
    if not ok_tokens:
        reasons.append(f"greedy tokens diverge at new token {first}")
    out("FAIL: " + "; ".join(reasons))
    return 1
