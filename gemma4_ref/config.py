"""Reading `config.json` into the numbers the decoder needs, and resolving them per layer.

Gemma 4 is heterogeneous across depth (transformers 5.24, `configuration_gemma4.py`):

* `layer_types` says which layers are sliding-window and which are global ("full") attention;
* global layers use a wider head (`global_head_dim`, 512 in every release) and, only when
  `attention_k_eq_v` is set, their own key/value head count (`num_global_key_value_heads`);
* the last `num_kv_shared_layers` layers compute no keys or values of their own: each reads the
  cache of the last earlier layer of its own type (the "store" layer);
* with `use_double_wide_mlp`, those KV-consumer layers have an MLP twice as wide.

A checkpoint written by transformers records the global-layer overrides as `per_layer_config`
(`{"5": {"head_dim": 512, ...}}`); Google's published files record `global_head_dim` and
`num_global_key_value_heads`. Both spellings are read here.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

SLIDING = "sliding_attention"
FULL = "full_attention"

_SUPPORTED_ACTIVATIONS = ("gelu_pytorch_tanh", "gelu_tanh")
_SUPPORTED_ROPE = ("default", "proportional")
_PER_LAYER_KEYS = ("head_dim", "num_key_value_heads")


@dataclass(frozen=True)
class RopeSpec:
    """One layer type's rotary embedding: `default` RoPE or proportional p-RoPE."""

    rope_type: str
    theta: float
    partial_rotary_factor: float = 1.0
    factor: float = 1.0


@dataclass(frozen=True)
class LayerSpec:
    """Everything that differs from one decoder layer to the next."""

    index: int
    layer_type: str  # SLIDING or FULL
    head_dim: int
    num_kv_heads: int
    intermediate_size: int
    kv_source: int  # the layer whose keys/values this one attends over (itself unless shared)
    k_eq_v: bool  # V is the raw k_proj output (full layers with attention_k_eq_v)

    @property
    def is_sliding(self) -> bool:
        return self.layer_type == SLIDING

    @property
    def shares_kv(self) -> bool:
        """True for KV consumers: no k/v projections, they read `kv_source`'s cache."""
        return self.kv_source != self.index


@dataclass
class TextConfig:
    """The text decoder's configuration, with defaults equal to transformers' `Gemma4TextConfig`."""

    vocab_size: int = 262_144
    hidden_size: int = 2304
    intermediate_size: int = 9216
    num_hidden_layers: int = 30
    num_attention_heads: int = 8
    num_key_value_heads: int = 4
    head_dim: int = 256
    hidden_activation: str = "gelu_pytorch_tanh"
    max_position_embeddings: int = 131_072
    rms_norm_eps: float = 1e-6
    pad_token_id: int | None = 0
    eos_token_id: list[int] = field(default_factory=lambda: [1])
    bos_token_id: int | None = 2
    tie_word_embeddings: bool = True
    attention_bias: bool = False
    sliding_window: int = 512
    layer_types: list[str] = field(default_factory=list)
    final_logit_softcapping: float | None = None
    use_bidirectional_attention: str | None = None
    vocab_size_per_layer_input: int = 262_144
    hidden_size_per_layer_input: int = 256
    attention_k_eq_v: bool = False
    num_kv_shared_layers: int = 0
    enable_moe_block: bool = False
    use_double_wide_mlp: bool = False
    num_experts: int | None = None
    top_k_experts: int | None = None
    moe_intermediate_size: int | None = None
    rope: dict[str, RopeSpec] = field(default_factory=dict)
    layers: list[LayerSpec] = field(default_factory=list)
    model_type: str = "gemma4_text"
    source: str = "config.json"

    @property
    def has_ple(self) -> bool:
        """Per-Layer Embeddings are on when `hidden_size_per_layer_input` is non-zero (E2B/E4B)."""
        return bool(self.hidden_size_per_layer_input)

    @property
    def first_shared_layer(self) -> int:
        return self.num_hidden_layers - self.num_kv_shared_layers

    @property
    def embed_scale(self) -> float:
        return math.sqrt(self.hidden_size)


def _get(d: dict[str, Any], key: str, default: Any, where: str, kind: type) -> Any:
    """Read one field, checking its type so that a typo'd config fails here, by name."""
    value = d.get(key, default)
    if value is None:
        return None
    if kind is bool and isinstance(value, bool):
        return value
    if kind in (int, float) and isinstance(value, int | float) and not isinstance(value, bool):
        if kind is int and not float(value).is_integer():
            raise ConfigError(f"{where}: field '{key}' must be an integer, got {value!r}.")
        return kind(value)
    raise ConfigError(f"{where}: field '{key}' must be of type {kind.__name__}, got {value!r}.")


def _as_id_list(value: Any, where: str, key: str) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, list) and all(isinstance(v, int) for v in value):
        return list(value)
    raise ConfigError(f"{where}: field '{key}' must be an int or a list of ints, got {value!r}.")


def text_config_from_dict(raw: dict[str, Any], source: str = "config.json") -> TextConfig:
    """Build a :class:`TextConfig` from a parsed `config.json`.

    Accepts a text-only config (`model_type: gemma4_text`, as `Gemma4ForCausalLM` saves it) and a
    multimodal one (`gemma4` / `gemma4_unified`), whose decoder sits under `text_config`.
    """
    top = raw
    model_type = raw.get("model_type", "gemma4_text")
    if "text_config" in raw:
        text = raw["text_config"]
        if not isinstance(text, dict):
            raise ConfigError(f"{source}: field 'text_config' must be an object.")
        where = f"{source} (text_config)"
    else:
        text = raw
        where = source
    if model_type not in ("gemma4", "gemma4_text", "gemma4_unified", "gemma4_unified_text"):
        raise ConfigError(
            f"{source}: model_type '{model_type}' is not a Gemma 4 model. This package runs "
            "gemma4, gemma4_text and gemma4_unified checkpoints."
        )

    c = TextConfig(model_type=model_type, source=source)
    # The unified 12B's text config (`Gemma4UnifiedTextConfig`) has other defaults and no PLE or
    # MoE fields at all: transformers builds neither, whatever the file says.
    unified = model_type.startswith("gemma4_unified") or str(text.get("model_type", "")).startswith(
        "gemma4_unified"
    )
    if unified:
        c.sliding_window, c.max_position_embeddings = 1024, 262_144
        c.use_bidirectional_attention = "vision"
    ints = (
        "vocab_size hidden_size intermediate_size num_hidden_layers num_attention_heads "
        "num_key_value_heads head_dim max_position_embeddings sliding_window "
        "vocab_size_per_layer_input num_kv_shared_layers"
    ).split()
    for key in ints:
        setattr(c, key, _get(text, key, getattr(c, key), where, int))
    c.hidden_size_per_layer_input = (
        0 if unified else _get(text, "hidden_size_per_layer_input", 256, where, int) or 0
    )
    c.rms_norm_eps = _get(text, "rms_norm_eps", c.rms_norm_eps, where, float)
    c.final_logit_softcapping = _get(text, "final_logit_softcapping", None, where, float)
    for key in (
        "tie_word_embeddings attention_bias attention_k_eq_v enable_moe_block use_double_wide_mlp"
    ).split():
        value = _get(text, key, getattr(c, key), where, bool)
        setattr(c, key, bool(value))
    c.enable_moe_block = c.enable_moe_block and not unified
    # The multimodal wrapper keeps `tie_word_embeddings` at the top level.
    if "tie_word_embeddings" in top and top is not text:
        c.tie_word_embeddings = bool(top["tie_word_embeddings"])
    c.hidden_activation = text.get("hidden_activation", c.hidden_activation)
    c.use_bidirectional_attention = text.get(
        "use_bidirectional_attention", c.use_bidirectional_attention
    )
    c.pad_token_id = text.get("pad_token_id", top.get("pad_token_id", 0))
    c.bos_token_id = text.get("bos_token_id", top.get("bos_token_id", 2))
    eos = top.get("eos_token_id", text.get("eos_token_id", 1))
    c.eos_token_id = _as_id_list(eos, where, "eos_token_id")
    for key in ("num_experts", "top_k_experts", "moe_intermediate_size"):
        setattr(c, key, _get(text, key, None, where, int))

    _check_supported(c, text, where)
    c.rope = _rope_specs(text, where)
    c.layer_types = _layer_types(text, c, where)
    c.layers = _resolve_layers(text, c, where)
    return c


def _check_supported(c: TextConfig, text: dict[str, Any], where: str) -> None:
    if c.hidden_activation not in _SUPPORTED_ACTIVATIONS:
        raise ConfigError(
            f"{where}: hidden_activation '{c.hidden_activation}' is not supported; Gemma 4 uses "
            "'gelu_pytorch_tanh'."
        )
    if c.attention_bias:
        raise ConfigError(
            f"{where}: attention_bias=true is not supported; every Gemma 4 release has no "
            "projection biases. Set it to false if the checkpoint has no bias tensors."
        )
    if c.use_bidirectional_attention == "all":
        raise ConfigError(
            f"{where}: use_bidirectional_attention='all' (a non-causal encoder) is not supported "
            "by this causal decoder; no released Gemma 4 model uses it."
        )
    if c.use_bidirectional_attention not in (None, "vision"):
        raise ConfigError(
            f"{where}: use_bidirectional_attention must be null, 'vision' or 'all', got "
            f"{c.use_bidirectional_attention!r}."
        )
    positive = (
        "vocab_size hidden_size num_hidden_layers num_attention_heads num_key_value_heads "
        "head_dim intermediate_size max_position_embeddings sliding_window"
    ).split()
    for key in positive:
        if getattr(c, key) <= 0:
            raise ConfigError(f"{where}: field '{key}' must be positive, got {getattr(c, key)}.")
    if not 0 <= c.num_kv_shared_layers <= c.num_hidden_layers:
        raise ConfigError(
            f"{where}: num_kv_shared_layers={c.num_kv_shared_layers} must lie in "
            f"[0, num_hidden_layers={c.num_hidden_layers}]."
        )
    if c.num_kv_shared_layers == c.num_hidden_layers:
        raise ConfigError(
            f"{where}: num_kv_shared_layers equals num_hidden_layers; such a model (the Gemma 4 "
            "assistant) has no keys of its own and needs a target model, which is not supported."
        )
    if c.enable_moe_block:
        for key in ("num_experts", "top_k_experts", "moe_intermediate_size"):
            if not getattr(c, key):
                raise ConfigError(f"{where}: enable_moe_block is true but '{key}' is missing.")
        if c.top_k_experts > c.num_experts:
            raise ConfigError(
                f"{where}: top_k_experts={c.top_k_experts} exceeds num_experts={c.num_experts}."
            )
    if c.has_ple and c.vocab_size_per_layer_input <= 0:
        raise ConfigError(f"{where}: vocab_size_per_layer_input must be positive with PLE on.")


def _rope_specs(text: dict[str, Any], where: str) -> dict[str, RopeSpec]:
    params = text.get("rope_parameters")
    if params is None:
        # transformers' defaults, used by every release.
        return {
            SLIDING: RopeSpec("default", 10_000.0),
            FULL: RopeSpec("proportional", 1_000_000.0, 0.25),
        }
    specs = {}
    for layer_type in (SLIDING, FULL):
        p = params.get(layer_type)
        if not isinstance(p, dict):
            raise ConfigError(f"{where}: rope_parameters lacks an entry for '{layer_type}'.")
        rope_type = p.get("rope_type", "default")
        if rope_type not in _SUPPORTED_ROPE:
            raise ConfigError(
                f"{where}: rope_parameters.{layer_type}.rope_type '{rope_type}' is not supported "
                f"(supported: {', '.join(_SUPPORTED_ROPE)})."
            )
        if "rope_theta" not in p:
            raise ConfigError(f"{where}: rope_parameters.{layer_type} lacks 'rope_theta'.")
        specs[layer_type] = RopeSpec(
            rope_type,
            float(p["rope_theta"]),
            float(p.get("partial_rotary_factor", 1.0)) if rope_type == "proportional" else 1.0,
            float(p.get("factor", 1.0)) if rope_type == "proportional" else 1.0,
        )
    return specs


def _layer_types(text: dict[str, Any], c: TextConfig, where: str) -> list[str]:
    types = text.get("layer_types")
    if types is None:
        types = [FULL if (i + 1) % 6 == 0 else SLIDING for i in range(c.num_hidden_layers)]
    types = list(types)
    if len(types) != c.num_hidden_layers:
        raise ConfigError(
            f"{where}: layer_types has {len(types)} entries but num_hidden_layers is "
            f"{c.num_hidden_layers}; give one type per layer."
        )
    bad = sorted({t for t in types if t not in (SLIDING, FULL)})
    if bad:
        raise ConfigError(
            f"{where}: layer_types holds {bad}; each entry must be '{SLIDING}' or '{FULL}'."
        )
    # transformers forces the last layer to global attention whatever the file says.
    types[-1] = FULL
    return types


def _per_layer_overrides(text: dict[str, Any], c: TextConfig, where: str) -> dict[int, dict]:
    if "per_layer_config" in text:
        raw = text["per_layer_config"] or {}
        overrides: dict[int, dict] = {}
        for key, value in raw.items():
            try:
                idx = int(key)
            except (TypeError, ValueError) as e:
                raise ConfigError(
                    f"{where}: per_layer_config key {key!r} is not a layer index."
                ) from e
            if not 0 <= idx < c.num_hidden_layers:
                raise ConfigError(f"{where}: per_layer_config names layer {idx}, out of range.")
            unknown = sorted(set(value) - set(_PER_LAYER_KEYS))
            if unknown:
                raise ConfigError(
                    f"{where}: per_layer_config.{key} overrides {unknown}; only "
                    f"{list(_PER_LAYER_KEYS)} may vary per layer in this implementation."
                )
            overrides[idx] = dict(value)
        return overrides
    global_head_dim = _get(text, "global_head_dim", 512, where, int)
    global_kv = _get(text, "num_global_key_value_heads", None, where, int)
    o: dict[str, Any] = {"head_dim": global_head_dim}
    if c.attention_k_eq_v and global_kv is not None:
        o["num_key_value_heads"] = global_kv
    return {i: dict(o) for i, t in enumerate(c.layer_types) if t == FULL}


def _resolve_layers(text: dict[str, Any], c: TextConfig, where: str) -> list[LayerSpec]:
    overrides = _per_layer_overrides(text, c, where)
    first_shared = c.first_shared_layer
    # The store layer of each type: the last non-shared layer of that type.
    store: dict[str, int] = {}
    for i in range(first_shared):
        store[c.layer_types[i]] = i
    layers = []
    for i, t in enumerate(c.layer_types):
        o = overrides.get(i, {})
        head_dim = int(o.get("head_dim", c.head_dim))
        n_kv = int(o.get("num_key_value_heads", c.num_key_value_heads))
        if c.num_attention_heads % n_kv:
            raise ConfigError(
                f"{where}: layer {i} has {n_kv} key/value heads, which does not divide "
                f"num_attention_heads={c.num_attention_heads}."
            )
        shared = i >= first_shared
        if shared and t not in store:
            raise ConfigError(
                f"{where}: layer {i} ({t}) shares keys/values, but no earlier non-shared "
                f"layer of type '{t}' exists to provide them; lower num_kv_shared_layers."
            )
        wide = c.use_double_wide_mlp and shared
        layers.append(
            LayerSpec(
                index=i,
                layer_type=t,
                head_dim=head_dim,
                num_kv_heads=n_kv,
                intermediate_size=c.intermediate_size * (2 if wide else 1),
                kv_source=store[t] if shared else i,
                k_eq_v=c.attention_k_eq_v and t == FULL,
            )
        )
    for spec in layers:
        src = layers[spec.kv_source]
        if spec.shares_kv and (src.head_dim, src.num_kv_heads) != (
            spec.head_dim,
            spec.num_kv_heads,
        ):
            raise ConfigError(
                f"{where}: layer {spec.index} reads layer {src.index}'s cache but their head "
                "shapes differ."
            )
    return layers


def load_json(path: Path, missing_ok: bool = False) -> dict[str, Any]:
    """Parse a JSON object file, naming it in the error if it is missing or malformed.

    With `missing_ok`, a file that does not exist reads as `{}` (optional files such as
    `generation_config.json` or `tokenizer_config.json`).
    """
    if not path.is_file():
        if missing_ok:
            return {}
        raise ConfigError(f"{path} not found. A Gemma 4 checkpoint folder needs {path.name}.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid JSON ({e}). Re-download or repair the file.") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object.")
    return data


def load_text_config(folder: Path) -> tuple[TextConfig, dict[str, Any]]:
    """Read `folder/config.json`; return the text config and the raw dict."""
    path = folder / "config.json"
    raw = load_json(path)
    return text_config_from_dict(raw, str(path)), raw
