"""Tiny random Gemma 4 checkpoints, made with transformers itself, for parity tests.

Each *variant* mimics the feature set of one released Gemma 4 model at toy size:

=======  ==========================================================================
variant  features
=======  ==========================================================================
e2b      PLE, KV sharing (4 of 10 layers), double-wide MLP in shared layers,
         4:1 sliding:full, 1 KV head, no K=V
e4b      PLE, KV sharing (6 of 12 layers), 5:1 sliding:full, 2 KV heads, no K=V
31b      K=V on full layers, 2 global KV heads vs 4 sliding KV heads
26b      MoE (8 experts, top-2) next to the dense MLP, K=V, 1 global KV head,
         6 layers (one 5:1 block: fewer routing decisions, fewer near-ties)
12b      the unified (encoder-free multimodal) model's text decoder: K=V with
         1 global KV head, no PLE, no MoE
=======  ==========================================================================

All variants use head_dim 16 on sliding layers and global_head_dim 32 on full layers, a
sliding window of 16 tokens, a 512-token vocabulary and final logit softcapping 30.

Every parameter and persistent buffer is overwritten with seeded random values
(NumPy generator, so the values do not depend on the torch version); nothing keeps its
init value of 0 or 1.  Norm weights are uniform in [0.5, 1.5] (so ``x*w`` versus ``x*(1+w)``
shows), except: q/k norms in [0.3, 0.9] (attention has scaling 1, and sharper attention makes
fp32 rounding grow chaotically from layer to layer: the logits would then differ from a float64
run by ~1e-4, the tolerance itself), the post-attention/post-MLP/post-PLE norms in [2, 4] (so the
residual stream is not dominated by the current token's embedding, which with a tied head makes
greedy decoding repeat one token), and the final norm in [5, 10] (logits up to ~25, where the
softcap of 30 bends them).  ``layer_scalar`` is in [0.4, 1.6]; the router scale and per-expert
scale in [0.5, 1.5].  The seeds were picked so that, in fp32, bf16 and fp16, the 64-token greedy
run of the test prompt has no EOS, at least 24 distinct tokens, no top-1/top-2 logit gap under
2e-3, no near-tie in MoE routing, and float32 stays within 5e-6 of float64.

A *checkpoint* is one variant saved in one way: dtype (fp32 / bf16 / fp16), one file or
sharded with ``model.safetensors.index.json``, text-only ``*ForCausalLM`` (keys
``model.*``) or the multimodal ``*ForConditionalGeneration`` (keys
``model.language_model.*`` next to tiny vision/audio towers).  Extra details that real
checkpoints have are reproduced on purpose:

* ``config.json`` carries ``global_head_dim`` / ``num_global_key_value_heads`` like the
  Hub files (transformers itself would write the resolved ``per_layer_config``); the
  checkpoints with ``config_form="native"`` keep transformers' own form instead.
* KV-consumer layers of e2b/e4b get (unused, random) ``k_proj`` / ``v_proj`` /
  ``k_norm`` tensors, as in the released E2B/E4B files; transformers ignores them.
* ``generation_config.json`` copies the released sampling defaults and
  ``eos_token_id = [1, 106, 50]``; ``config.json`` has ``eos_token_id = [1, 106]``.
* The unified (12b) towers are saved under the Hub's pre-rename names (``vision_embedder.*``):
  transformers' save_pretrained reverses its own load-time renaming.
* ``data/tokenizer/*`` (the project tokenizer, 4096 ids, so only a few low ids fit the tiny
  vocabulary) is copied in when it exists.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
TOKENIZER_DIR = REPO_ROOT / "data" / "tokenizer"

VOCAB = 512
SLIDING_WINDOW = 16
BOS_ID = 2
CONFIG_EOS = [1, 106]
GENERATION_EOS = [1, 106, 50]
PROMPT_LEN = 40  # > 2 sliding windows
MAX_NEW_TOKENS = 64  # the greedy run ends at position 103, > 6 windows
SHORT_PROMPT_LEN = 5  # < the window: the KV cache fills up and wraps during decoding
SHORT_MAX_NEW_TOKENS = 40  # (some checkpoints meet an EOS id first: stopping is tested too)
PROMPT_SEED = 1234
EMBED_STD = 0.1
FINAL_NORM_RANGE = (5.0, 10.0)
QK_NORM_RANGE = (0.3, 0.9)
POST_NORM_RANGE = (2.0, 4.0)
POST_NORMS = (
    "post_attention_layernorm.weight",
    "post_feedforward_layernorm.weight",
    "post_per_layer_input_norm.weight",
)

S, F = "sliding_attention", "full_attention"

_COMMON_TEXT: dict[str, Any] = {
    "vocab_size": VOCAB,
    "max_position_embeddings": 1024,
    "sliding_window": SLIDING_WINDOW,
    "final_logit_softcapping": 30.0,
    "rms_norm_eps": 1e-6,
    "hidden_activation": "gelu_pytorch_tanh",
    "head_dim": 16,
    "global_head_dim": 32,
    "pad_token_id": 0,
    "bos_token_id": BOS_ID,
    "eos_token_id": CONFIG_EOS,
    "tie_word_embeddings": True,
    "attention_bias": False,
}


@dataclasses.dataclass(frozen=True)
class Variant:
    """One released model's feature set at toy size."""

    name: str
    text: dict[
        str, Any
    ]  # Gemma4TextConfig / Gemma4UnifiedTextConfig kwargs (on top of _COMMON_TEXT)
    unified: bool = False  # True: the gemma4_unified classes (12B)
    vision: dict[str, Any] | None = None  # tiny vision tower kwargs (multimodal checkpoints only)
    audio: dict[str, Any] | None = None  # tiny audio tower kwargs (None: no audio tower)
    seed: int = 0


_GEMMA4_VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "patch_size": 16,
    "pooling_kernel_size": 3,
    "position_embedding_size": 64,
}
_GEMMA4_AUDIO = {
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "subsampling_conv_channels": [8, 4],
    "output_proj_dims": 48,
}

VARIANTS: dict[str, Variant] = {
    "e2b": Variant(
        name="e2b",
        text={
            "hidden_size": 64,
            "intermediate_size": 96,
            "num_hidden_layers": 10,
            "num_attention_heads": 4,
            "num_key_value_heads": 1,
            "layer_types": [S, S, S, S, F] * 2,
            "num_kv_shared_layers": 4,  # layers 6..9 reuse; stores: full = 4, sliding = 5
            "use_double_wide_mlp": True,
            "hidden_size_per_layer_input": 16,
            "vocab_size_per_layer_input": VOCAB,
            "attention_k_eq_v": False,
            "num_global_key_value_heads": None,
            "use_bidirectional_attention": None,
        },
        vision={**_GEMMA4_VISION, "use_clipped_linears": True, "standardize": False},
        audio=_GEMMA4_AUDIO,
        seed=306,
    ),
    "e4b": Variant(
        name="e4b",
        text={
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 12,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "layer_types": [S, S, S, S, S, F] * 2,
            "num_kv_shared_layers": 6,  # layers 6..11 reuse; stores: sliding = 4, full = 5
            "use_double_wide_mlp": False,
            "hidden_size_per_layer_input": 16,
            "vocab_size_per_layer_input": VOCAB,
            "attention_k_eq_v": False,
            "num_global_key_value_heads": None,
            "use_bidirectional_attention": None,
        },
        vision={**_GEMMA4_VISION, "use_clipped_linears": True, "standardize": False},
        audio=_GEMMA4_AUDIO,
        seed=308,
    ),
    "31b": Variant(
        name="31b",
        text={
            "hidden_size": 96,
            "intermediate_size": 192,
            "num_hidden_layers": 12,
            "num_attention_heads": 8,
            "num_key_value_heads": 4,
            "num_global_key_value_heads": 2,
            "attention_k_eq_v": True,
            "layer_types": [S, S, S, S, S, F] * 2,
            "hidden_size_per_layer_input": 0,
            "use_bidirectional_attention": "vision",
        },
        vision={**_GEMMA4_VISION, "use_clipped_linears": False, "standardize": True},
        seed=319,
    ),
    "26b": Variant(
        name="26b",
        text={
            "hidden_size": 64,
            "intermediate_size": 64,  # the dense branch
            "num_hidden_layers": 6,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "num_global_key_value_heads": 1,
            "attention_k_eq_v": True,
            "layer_types": [S, S, S, S, S, F],
            "hidden_size_per_layer_input": 0,
            "enable_moe_block": True,
            "num_experts": 8,
            "top_k_experts": 2,
            "moe_intermediate_size": 32,
            "use_bidirectional_attention": "vision",
        },
        vision={**_GEMMA4_VISION, "use_clipped_linears": False, "standardize": True},
        seed=306,
    ),
    "12b": Variant(
        name="12b",
        unified=True,
        text={
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 12,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "num_global_key_value_heads": 1,
            "attention_k_eq_v": True,
            "layer_types": [S, S, S, S, S, F] * 2,
            "use_bidirectional_attention": "vision",
        },
        vision={"patch_size": 4, "pooling_kernel_size": 3, "mm_posemb_size": 16},
        audio={"audio_embed_dim": 16},
        seed=300,
    ),
}


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """One variant saved in one format."""

    variant: str
    dtype: str  # "fp32" | "bf16" | "fp16"
    sharded: bool
    multimodal: bool  # *ForConditionalGeneration (model.language_model.*) vs *ForCausalLM (model.*)
    config_form: str = "hub"  # "hub": global_head_dim in config.json; "native": per_layer_config

    @property
    def id(self) -> str:
        parts = [
            self.variant,
            self.dtype,
            "sharded" if self.sharded else "single",
            "mm" if self.multimodal else "causal",
        ]
        if self.config_form != "hub":
            parts.append(self.config_form)
        return "-".join(parts)


# The test matrix: every variant, every dtype, both file layouts, both key prefixes and both
# config forms appear at least once.
CHECKPOINTS: list[Checkpoint] = [
    Checkpoint("e2b", "fp32", sharded=False, multimodal=False),
    Checkpoint("e2b", "bf16", sharded=True, multimodal=True),
    Checkpoint("e4b", "fp16", sharded=False, multimodal=True),
    Checkpoint("e4b", "bf16", sharded=True, multimodal=False),
    Checkpoint("31b", "fp32", sharded=True, multimodal=True),
    Checkpoint("31b", "bf16", sharded=False, multimodal=False, config_form="native"),
    Checkpoint("26b", "bf16", sharded=False, multimodal=True),
    Checkpoint("26b", "fp32", sharded=True, multimodal=False),
    Checkpoint("12b", "bf16", sharded=True, multimodal=True),
    Checkpoint("12b", "fp16", sharded=False, multimodal=True, config_form="native"),
]
CHECKPOINTS_BY_ID: dict[str, Checkpoint] = {c.id: c for c in CHECKPOINTS}


def test_prompt(
    vocab_size: int = VOCAB, length: int = PROMPT_LEN, seed: int = PROMPT_SEED
) -> list[int]:
    """BOS followed by seeded random ids that avoid the special and EOS ids."""
    rng = np.random.default_rng(seed)
    avoid = {0, 1, 2, 3, 4, *GENERATION_EOS}
    pool = np.array([i for i in range(vocab_size) if i not in avoid])
    return [BOS_ID] + rng.choice(pool, size=length - 1).tolist()


test_prompt.__test__ = False  # not a pytest test despite the name


# --------------------------------------------------------------------------------------------
# model construction
# --------------------------------------------------------------------------------------------


def _text_config(variant: Variant):
    import transformers

    kwargs = {**_COMMON_TEXT, **variant.text}
    cls = transformers.Gemma4UnifiedTextConfig if variant.unified else transformers.Gemma4TextConfig
    return cls(**kwargs)


def _full_config(variant: Variant):
    import transformers

    text = _text_config(variant)
    if variant.unified:
        hidden = text.hidden_size
        vision = transformers.Gemma4UnifiedVisionConfig(
            mm_embed_dim=hidden, output_proj_dims=hidden, **(variant.vision or {})
        )
        audio = transformers.Gemma4UnifiedAudioConfig(**variant.audio) if variant.audio else None
        return transformers.Gemma4UnifiedConfig(
            text_config=text, vision_config=vision, audio_config=audio
        )
    vision = transformers.Gemma4VisionConfig(**variant.vision) if variant.vision else None
    audio = transformers.Gemma4AudioConfig(**variant.audio) if variant.audio else None
    return transformers.Gemma4Config(text_config=text, vision_config=vision, audio_config=audio)


def _random_tensor(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Seeded random values for one parameter or buffer, chosen by its role."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "layer_scalar":
        return rng.uniform(0.4, 1.6, shape)
    if leaf in ("input_min", "output_min"):  # clip bounds of the E2B/E4B towers
        return rng.uniform(-40.0, -10.0, shape)
    if leaf in ("input_max", "output_max"):
        return rng.uniform(10.0, 40.0, shape)
    if leaf in ("scale", "per_expert_scale", "std_scale"):  # router scales, vision standardize
        return rng.uniform(0.5, 1.5, shape)
    if name.endswith("norm.weight") and name.startswith(
        ("model.norm", "model.language_model.norm")
    ):
        # final norm: larger, so that the logits reach the softcap's curved range
        return rng.uniform(FINAL_NORM_RANGE[0], FINAL_NORM_RANGE[1], shape)
    if name.endswith(("q_norm.weight", "k_norm.weight")):
        # attention logits are q.k with scaling 1: keep them moderate (see QK_NORM_RANGE)
        return rng.uniform(QK_NORM_RANGE[0], QK_NORM_RANGE[1], shape)
    if name.endswith(POST_NORMS):
        # the sub-layer outputs: large enough that the residual stream is not mostly the
        # current token's embedding (tied head + a dominant embedding = greedy repeats itself)
        return rng.uniform(POST_NORM_RANGE[0], POST_NORM_RANGE[1], shape)
    if leaf == "weight" and len(shape) == 1:  # every RMSNorm / LayerNorm weight
        return rng.uniform(0.5, 1.5, shape)
    if len(shape) <= 1:  # biases, std_bias, per_dim_scale
        return rng.normal(0.0, 0.2, shape)
    if "embed_tokens" in name or name.startswith("lm_head"):  # token / per-layer tables (tied head)
        return rng.normal(0.0, EMBED_STD, shape)
    fan_in = shape[-1] if "experts" in name else int(np.prod(shape[1:]))
    return rng.normal(0.0, 1.0 / np.sqrt(fan_in), shape)


def randomise_(model, seed: int) -> None:
    """Overwrite every parameter and persistent buffer of a torch model in place."""
    import torch

    rng = np.random.default_rng(seed)
    seen: set[int] = set()
    with torch.no_grad():
        for name, tensor in sorted(model.state_dict(keep_vars=True).items()):
            if not tensor.is_floating_point() or tensor.data_ptr() in seen:
                continue  # tied lm_head shares the embedding's storage
            seen.add(tensor.data_ptr())
            values = _random_tensor(name, tuple(tensor.shape), rng)
            tensor.copy_(torch.from_numpy(values.astype(np.float32)))


def build_text_model(variant_name: str):
    """The randomised fp32 ``*ForCausalLM`` of a variant (eager attention)."""
    import transformers

    variant = VARIANTS[variant_name]
    cls = (
        transformers.Gemma4UnifiedForCausalLM if variant.unified else transformers.Gemma4ForCausalLM
    )
    model = cls(_text_config(variant))
    randomise_(model, variant.seed)
    return model.eval()


def build_multimodal_model(variant_name: str):
    """The ``*ForConditionalGeneration`` of a variant: the same text weights as
    :func:`build_text_model`, plus randomised tiny towers."""
    import transformers

    variant = VARIANTS[variant_name]
    cls = (
        transformers.Gemma4UnifiedForConditionalGeneration
        if variant.unified
        else transformers.Gemma4ForConditionalGeneration
    )
    model = cls(_full_config(variant))
    randomise_(model, variant.seed + 1000)
    text_state = build_text_model(variant_name).model.state_dict()
    missing, unexpected = model.model.language_model.load_state_dict(text_state, strict=True)
    assert not missing and not unexpected
    return model.eval()


# --------------------------------------------------------------------------------------------
# saving
# --------------------------------------------------------------------------------------------

_TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}

GENERATION_CONFIG: dict[str, Any] = {
    "bos_token_id": BOS_ID,
    "pad_token_id": 0,
    "eos_token_id": GENERATION_EOS,
    "do_sample": True,
    "temperature": 1.0,
    "top_k": 64,
    "top_p": 0.95,
}


def _text_config_dict(config: dict[str, Any], multimodal: bool) -> dict[str, Any]:
    return config["text_config"] if multimodal else config


def _rewrite_config_hub_form(path: Path, variant: Variant, multimodal: bool) -> None:
    """Replace transformers' resolved ``per_layer_config`` by the Hub's two scalar fields."""
    config = json.loads((path / "config.json").read_text())
    text = _text_config_dict(config, multimodal)
    text.pop("per_layer_config", None)
    text["global_head_dim"] = _COMMON_TEXT["global_head_dim"]
    text["num_global_key_value_heads"] = variant.text.get("num_global_key_value_heads")
    (path / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _add_unused_shared_kv_tensors(
    path: Path, variant: Variant, multimodal: bool, seed: int
) -> None:
    """Append random k_proj/v_proj/k_norm tensors for the KV-consumer layers, like the
    released E2B/E4B files (transformers drops them on load; so must any loader)."""
    text = variant.text
    n_layers = text["num_hidden_layers"]
    n_shared = text.get("num_kv_shared_layers", 0)
    if not n_shared:
        return
    prefix = "model.language_model." if multimodal else "model."
    rng = np.random.default_rng(seed)
    extra: dict[str, np.ndarray] = {}
    hidden = text["hidden_size"]
    for i in range(n_layers - n_shared, n_layers):
        full = text["layer_types"][i] == F
        hd = _COMMON_TEXT["global_head_dim"] if full else _COMMON_TEXT["head_dim"]
        kv_dim = text["num_key_value_heads"] * hd
        base = f"{prefix}layers.{i}.self_attn."
        extra[base + "k_proj.weight"] = rng.normal(0.0, 1.0, (kv_dim, hidden))
        extra[base + "v_proj.weight"] = rng.normal(0.0, 1.0, (kv_dim, hidden))
        extra[base + "k_norm.weight"] = rng.uniform(-3.0, 3.0, (hd,))

    index_path = path / "model.safetensors.index.json"
    if index_path.exists():
        index = json.loads(index_path.read_text())
        target = sorted(set(index["weight_map"].values()))[-1]
        added = _append_tensors(path / target, extra)
        index.setdefault("metadata", {})
        index["metadata"]["total_size"] = index["metadata"].get("total_size", 0) + added
        for key in extra:
            index["weight_map"][key] = target
        index["weight_map"] = dict(sorted(index["weight_map"].items()))
        index_path.write_text(json.dumps(index, indent=2) + "\n")
    else:
        _append_tensors(path / "model.safetensors", extra)


def _append_tensors(file: Path, extra: dict[str, np.ndarray]) -> int:
    """Add tensors to a safetensors file, in the dtype of the file's other float tensors;
    returns the number of bytes added."""
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(file)
    dtype = next(t.dtype for t in tensors.values() if t.is_floating_point())
    added = 0
    for key, value in extra.items():
        tensors[key] = torch.from_numpy(value.astype(np.float32)).to(dtype)
        added += tensors[key].numel() * tensors[key].element_size()
    save_file(tensors, file, metadata={"format": "pt"})
    return added


def save_checkpoint(ckpt: Checkpoint, path: Path) -> Path:
    """Build the variant's model and save it at ``path`` in the checkpoint's format."""
    import torch

    variant = VARIANTS[ckpt.variant]
    model = (
        build_multimodal_model(ckpt.variant) if ckpt.multimodal else build_text_model(ckpt.variant)
    )
    model = model.to(getattr(torch, _TORCH_DTYPES[ckpt.dtype]))
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, max_shard_size="64KB" if ckpt.sharded else "10GB")
    assert (path / "model.safetensors.index.json").exists() == ckpt.sharded

    if ckpt.config_form == "hub":
        _rewrite_config_hub_form(path, variant, ckpt.multimodal)
    _add_unused_shared_kv_tensors(path, variant, ckpt.multimodal, seed=variant.seed + 2000)
    (path / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG, indent=2) + "\n")
    if TOKENIZER_DIR.is_dir():
        for item in TOKENIZER_DIR.iterdir():
            if item.is_file():
                shutil.copy2(item, path / item.name)
    return path


# --------------------------------------------------------------------------------------------
# the reference side
# --------------------------------------------------------------------------------------------


def reference_class(path: Path):
    """The transformers class that matches a checkpoint folder's config.json."""
    import transformers

    config = json.loads((Path(path) / "config.json").read_text())
    arch = (config.get("architectures") or [None])[0]
    by_model_type = {
        "gemma4": "Gemma4ForConditionalGeneration",
        "gemma4_text": "Gemma4ForCausalLM",
        "gemma4_unified": "Gemma4UnifiedForConditionalGeneration",
        "gemma4_unified_text": "Gemma4UnifiedForCausalLM",
    }
    return getattr(transformers, arch or by_model_type[config["model_type"]])


def load_reference(path: Path):
    """Load a checkpoint in transformers: fp32 (exact upcast of bf16/fp16), eager attention."""
    import torch

    cls = reference_class(path)
    model = cls.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    return model.eval()


@dataclasses.dataclass
class Reference:
    """transformers' outputs for the test prompt of one checkpoint."""

    prompt: list[int]
    prefill_logits: np.ndarray  # [PROMPT_LEN, V] float32, fresh prefill
    tokens: list[int]  # greedy new tokens, generate(do_sample=False)
    step_logits: np.ndarray  # [n_new, V] float32, logits of each greedy step through the KV cache
    min_gap: float  # smallest top-1 minus top-2 logit over the greedy steps
    min_router_gap: float  # MoE: smallest (p2 - p3) / p2 of the router over the whole run (else 1)


def reference_outputs(model, prompt: list[int], max_new_tokens: int = MAX_NEW_TOKENS) -> Reference:
    """Run transformers' prefill and greedy generation (a model from :func:`load_reference`)."""
    import torch

    ids = torch.tensor([prompt])
    with torch.no_grad():
        prefill = model(input_ids=ids).logits[0].float().numpy()  # [S, V]
        out = model.generate(
            ids,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
        )
    tokens = out.sequences[0, len(prompt) :].tolist()
    steps = torch.cat(out.logits, 0).float().numpy()  # [n_new, V]
    top2 = np.sort(steps, axis=-1)[:, -2:]
    router_gap = 1.0
    if getattr(model.config.get_text_config(), "enable_moe_block", False):
        # a near-tie between the k-th and (k+1)-th expert would make the choice a coin toss
        k = model.config.get_text_config().top_k_experts
        with torch.no_grad():
            probs = model(input_ids=out.sequences[:, :-1], output_router_logits=True).router_logits
        for p in probs:  # [S, E] router probabilities per layer
            srt = torch.sort(p.float(), -1, descending=True).values
            router_gap = min(router_gap, float(((srt[:, k - 1] - srt[:, k]) / srt[:, k - 1]).min()))
    return Reference(
        prompt=list(prompt),
        prefill_logits=prefill,
        tokens=tokens,
        step_logits=steps,
        min_gap=float((top2[:, 1] - top2[:, 0]).min()),
        min_router_gap=router_gap,
    )


class TinyStore:
    """Builds each checkpoint, and runs transformers on it, at most once (per pytest session)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._paths: dict[str, Path] = {}
        self._refs: dict[str, Reference] = {}
        self._ours: dict[str, Any] = {}

    def path(self, ckpt_id: str) -> Path:
        """The checkpoint folder (built on first use)."""
        if ckpt_id not in self._paths:
            self._paths[ckpt_id] = save_checkpoint(CHECKPOINTS_BY_ID[ckpt_id], self.root / ckpt_id)
        return self._paths[ckpt_id]

    def reference(self, ckpt_id: str, kind: str = "long") -> Reference:
        """transformers' outputs for the test prompt: "long" (40 tokens, 64 new) or "short"
        (its first 5 tokens, up to 40 new)."""
        key = f"{ckpt_id}/{kind}"
        if key not in self._refs:
            model = load_reference(self.path(ckpt_id))
            self._refs[f"{ckpt_id}/long"] = reference_outputs(model, test_prompt())
            self._refs[f"{ckpt_id}/short"] = reference_outputs(
                model, test_prompt()[:SHORT_PROMPT_LEN], SHORT_MAX_NEW_TOKENS
            )
        return self._refs[key]

    def ours(self, ckpt_id: str):
        """The checkpoint loaded with ``gemma4_ref.load_model``."""
        if ckpt_id not in self._ours:
            import gemma4_ref

            self._ours[ckpt_id] = gemma4_ref.load_model(str(self.path(ckpt_id)))
        return self._ours[ckpt_id]
