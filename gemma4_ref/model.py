"""The Gemma 4 text decoder: loading a checkpoint folder and running it.

The forward pass, per token (transformers 5.24, `Gemma4TextModel.forward` and
`Gemma4TextDecoderLayer.forward`)::

    x = E[ids] * sqrt(H)                             # scaled embedding
    ple = PLE(ids, x)                                # E2B/E4B only: [S, L, 256]
    for each layer i:
        x = x + post_attn_norm(attn(input_norm(x)))  # sliding or global, maybe KV-shared
        r = x
        h = mlp(pre_ff_norm(x))
        if MoE: h = post_ff_norm_1(h) + post_ff_norm_2(experts(pre_ff_norm_2(r), router(r)))
        x = r + post_ff_norm(h)
        if PLE: x = x + ple_gate(x, ple[:, i])
        x = x * layer_scalar[i]
    logits = cap * tanh((norm(x) @ E^T) / cap)       # tied head, soft-capped at 30

Everything runs in float32 on weights kept in their stored dtype.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .attention import KVCache, attention, attention_probs
from .chat import ChatTemplate, Response, images_in, parse_response
from .checkpoint import Checkpoint
from .compressed import QuantizationConfig
from .config import LayerSpec, TextConfig, load_json, load_text_config
from .errors import CheckpointError, ConfigError, InputError
from .image import ProcessedImage, default_soft_tokens, process_image
from .int4 import QuantizedLinear, unpack_ref
from .linear import Linear, widen
from .mlp import GatedMLP
from .moe import Experts, route
from .multimodal import PlaceholderIds, expand_images, last_visible, merge_soft_tokens
from .norm import rms_norm
from .ple import PerLayerEmbeddings, PerLayerGate
from .rope import apply_rope, cos_sin, inv_freq
from .sampling import Sampling, next_token
from .tokenizer import StreamDecoder, Tokenizer
from .vision import VisionTower, vision_config_from_dict

#: Where the embedded default model lives, relative to the repository root.
DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "data" / "gemma4-tiny"

_DTYPE_TAGS = {"BF16": "bf16", "F16": "f16", "F32": "f32"}


# --- weights -----------------------------------------------------------------------------------


class _Weights:
    """Fetches tensors by their decoder-relative name, checking shape and dtype."""

    def __init__(self, ckpt: Checkpoint, prefix: str, quant: QuantizationConfig | None):
        self.ckpt = ckpt
        self.prefix = prefix
        self.quant = quant

    def _full(self, name: str) -> str:
        return self.prefix + name

    def has(self, name: str) -> bool:
        return self._full(name) in self.ckpt

    def raw(self, name: str, shape: tuple[int, ...]) -> tuple[np.ndarray, str]:
        full = self._full(name)
        arr = self.ckpt.array(full, shape)
        tag = _DTYPE_TAGS.get(self.ckpt.info(full).dtype)
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
        packed = ck.array(full + ".weight_packed", (out_f, in_f * bits // 32))
        if ck.info(full + ".weight_packed").dtype != "I32":
            raise CheckpointError(f"tensor '{full}.weight_packed' must be int32.")
        if full + ".weight_shape" in ck:
            shape = [int(v) for v in ck.array(full + ".weight_shape")]
            if shape != [out_f, in_f]:
                raise CheckpointError(
                    f"tensor '{full}.weight_shape' says {shape}, but config.json implies "
                    f"{[out_f, in_f]}. The config and weights do not match."
                )
        scale = ck.array(full + ".weight_scale", (out_f, in_f // group))
        scale_dtype = _DTYPE_TAGS.get(ck.info(full + ".weight_scale").dtype)
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


# --- looking inside ---------------------------------------------------------------------------


@dataclass
class Trace:
    """What one forward pass computed inside, layer by layer, for the book's pictures.

    Filled by :meth:`Model.trace`. Lists are indexed by layer; entries a layer does not have
    (no MoE, no PLE) are None.
    """

    ids: np.ndarray  # [S]
    attention: list[np.ndarray] = field(default_factory=list)  # [nH, S, T] softmax weights
    key_positions: list[np.ndarray] = field(default_factory=list)  # [T] position of each key
    # (probabilities [S, E], chosen experts [S, k], their weights [S, k]); note the order differs
    # from `moe.route`'s return value (probs, weights, index)
    router: list[tuple[np.ndarray, np.ndarray, np.ndarray] | None] = field(default_factory=list)
    ple: list[np.ndarray | None] = field(default_factory=list)  # [S, H] the PLE residual update
    residual: list[np.ndarray] = field(default_factory=list)  # [S, H] stream after each layer
    per_layer_inputs: np.ndarray | None = None  # [S, L, P]
    logits: np.ndarray | None = None  # [S, V]


# --- layers ------------------------------------------------------------------------------------


@dataclass
class _MoE:
    proj: Linear
    scale: np.ndarray
    per_expert_scale: np.ndarray
    experts: Experts
    pre_norm: np.ndarray  # pre_feedforward_layernorm_2
    post_norm_dense: np.ndarray  # post_feedforward_layernorm_1
    post_norm_experts: np.ndarray  # post_feedforward_layernorm_2
    top_k: int


class DecoderLayer:
    """One Gemma 4 decoder layer; see the module docstring for its dataflow."""

    def __init__(self, spec: LayerSpec, cfg: TextConfig, w: _Weights):
        i, H, hd = spec.index, cfg.hidden_size, spec.head_dim
        p = f"layers.{i}."
        self.spec = spec
        self.eps = cfg.rms_norm_eps
        self.n_heads = cfg.num_attention_heads
        self.window = cfg.sliding_window if spec.is_sliding else 0
        self.input_norm = w.vector(p + "input_layernorm.weight", H)
        self.post_attn_norm = w.vector(p + "post_attention_layernorm.weight", H)
        self.pre_ff_norm = w.vector(p + "pre_feedforward_layernorm.weight", H)
        self.post_ff_norm = w.vector(p + "post_feedforward_layernorm.weight", H)
        a = p + "self_attn."
        self.q_proj = w.linear(a + "q_proj", self.n_heads * hd, H)
        self.q_norm = w.vector(a + "q_norm.weight", hd)
        self.o_proj = w.linear(a + "o_proj", H, self.n_heads * hd)
        # KV consumers have no k/v weights of their own (the checkpoint may still hold some;
        # transformers ignores them, and so do we).
        self.k_proj = self.v_proj = self.k_norm = None
        if not spec.shares_kv:
            self.k_proj = w.linear(a + "k_proj", spec.num_kv_heads * hd, H)
            self.k_norm = w.vector(a + "k_norm.weight", hd)
            if not spec.k_eq_v:
                self.v_proj = w.linear(a + "v_proj", spec.num_kv_heads * hd, H)
        m, inter = p + "mlp.", spec.intermediate_size
        self.mlp = GatedMLP(
            w.linear(m + "gate_proj", inter, H),
            w.linear(m + "up_proj", inter, H),
            w.linear(m + "down_proj", H, inter),
        )
        self.moe = _load_moe(p, cfg, w) if cfg.enable_moe_block else None
        self.ple_gate = None
        if cfg.has_ple:
            P = cfg.hidden_size_per_layer_input
            self.ple_gate = PerLayerGate(
                w.linear(p + "per_layer_input_gate", P, H),
                w.linear(p + "per_layer_projection", H, P),
                w.vector(p + "post_per_layer_input_norm.weight", H),
                self.eps,
            )
        self.layer_scalar = np.float32(w.vector(p + "layer_scalar", 1)[0])

    def attend(
        self,
        h: np.ndarray,
        pos: np.ndarray,
        rope: tuple[np.ndarray, np.ndarray],
        cache: KVCache,
        shared: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
        trace: Trace | None = None,
        q_last: np.ndarray | None = None,
    ) -> np.ndarray:
        """Self-attention; `q_last` opens image blocks (see attention.py).

        # h [S, H] (normed), pos [S], q_last [S] -> [S, H]
        """
        S, hd = h.shape[0], self.spec.head_dim
        # Gemma 4 lets image tokens see each other on sliding layers only; global ones stay causal.
        q_last = q_last if self.spec.is_sliding else None
        cos, sin = rope
        q = self.q_proj(h).reshape(S, self.n_heads, hd)
        q = apply_rope(rms_norm(q, self.q_norm, self.eps), cos, sin)
        if self.spec.shares_kv:
            keys, values, k_pos = shared[self.spec.layer_type]
        else:
            k_raw = self.k_proj(h).reshape(S, self.spec.num_kv_heads, hd)
            # K=V: the value is the raw key projection, taken before k_norm and RoPE.
            v_raw = k_raw if self.v_proj is None else self.v_proj(h).reshape(k_raw.shape)
            k = apply_rope(rms_norm(k_raw, self.k_norm, self.eps), cos, sin)
            v = rms_norm(v_raw, None, self.eps)
            keys, values, k_pos = cache.layers[self.spec.index].extend(k, v, pos)
            # Later consumers of this layer type read the last producer's keys and values.
            shared[self.spec.layer_type] = (keys, values, k_pos)
        o = attention(q, keys, values, pos, k_pos, self.window, q_last)
        if trace is not None:
            trace.attention.append(attention_probs(q, keys, pos, k_pos, self.window, q_last))
            trace.key_positions.append(k_pos)
        return self.o_proj(o.reshape(S, self.n_heads * hd))

    def feed_forward(self, x: np.ndarray, trace: Trace | None = None) -> np.ndarray:
        """Dense MLP, plus the expert bank on MoE layers.  # [S, H] residual -> [S, H]"""
        h = self.mlp(rms_norm(x, self.pre_ff_norm, self.eps))
        if trace is not None:
            trace.router.append(None)
        if self.moe is not None:
            moe = self.moe
            probs, weights, index = route(
                x, moe.proj, moe.scale, moe.per_expert_scale, moe.top_k, self.eps
            )
            if trace is not None:
                trace.router[-1] = (probs, index, weights)
            e = moe.experts(rms_norm(x, moe.pre_norm, self.eps), weights, index)
            h = rms_norm(h, moe.post_norm_dense, self.eps) + rms_norm(
                e, moe.post_norm_experts, self.eps
            )
        return rms_norm(h, self.post_ff_norm, self.eps)

    def __call__(self, x, pos, rope, cache, shared, per_layer_input, trace=None, q_last=None):
        """# x [S, H] -> [S, H]"""
        h = self.attend(
            rms_norm(x, self.input_norm, self.eps), pos, rope, cache, shared, trace, q_last
        )
        x = x + rms_norm(h, self.post_attn_norm, self.eps)
        x = x + self.feed_forward(x, trace)
        ple = None
        if self.ple_gate is not None:
            ple = self.ple_gate(x, per_layer_input)
            x = x + ple
        x = x * self.layer_scalar
        if trace is not None:
            trace.ple.append(ple)
            trace.residual.append(x)
        return x


def _load_moe(p: str, cfg: TextConfig, w: _Weights) -> _MoE:
    H, E, inter = cfg.hidden_size, cfg.num_experts, cfg.moe_intermediate_size
    experts = w.prefix + p + "experts."
    if any(n.startswith(experts) and "packed" in n for n in w.ckpt.tensors):
        raise ConfigError(
            f"tensors under '{experts}' are quantized; packed MoE experts are not supported. "
            "Keep the experts in bf16 (Google's exports do)."
        )
    gate_up, gu_tag = w.raw(p + "experts.gate_up_proj", (E, 2 * inter, H))
    down, d_tag = w.raw(p + "experts.down_proj", (E, H, inter))
    name = w.prefix + p + "experts."
    return _MoE(
        proj=w.linear(p + "router.proj", E, H),
        scale=w.vector(p + "router.scale", H),
        per_expert_scale=w.vector(p + "router.per_expert_scale", E),
        experts=Experts(
            [Linear(gate_up[e], gu_tag, f"{name}gate_up_proj[{e}]") for e in range(E)],
            [Linear(down[e], d_tag, f"{name}down_proj[{e}]") for e in range(E)],
        ),
        pre_norm=w.vector(p + "pre_feedforward_layernorm_2.weight", H),
        post_norm_dense=w.vector(p + "post_feedforward_layernorm_1.weight", H),
        post_norm_experts=w.vector(p + "post_feedforward_layernorm_2.weight", H),
        top_k=cfg.top_k_experts,
    )


# --- the model ---------------------------------------------------------------------------------


class Model:
    """A loaded Gemma 4 text model. Build one with :func:`load_model`."""

    def __init__(self, path: Path, progress: Callable[[str], None] | None = None):
        say = progress or (lambda _msg: None)
        self.path = path
        cfg, raw = load_text_config(path)
        quant = None
        if "quantization_config" in raw:
            quant = QuantizationConfig.from_dict(
                raw["quantization_config"], str(path / "config.json")
            )
        self.config = cfg
        gen_path = path / "generation_config.json"
        self.generation_config: dict[str, Any] = load_json(gen_path, missing_ok=True)
        self.eos_ids: set[int] = set(
            _ids(self.generation_config.get("eos_token_id")) or cfg.eos_token_id
        )

        ckpt = Checkpoint(path)
        self.checkpoint = ckpt
        w = _Weights(ckpt, ckpt.text_prefix(), quant)
        for name in ("embed_tokens", "embed_tokens_per_layer"):
            if w.has(name + ".weight_packed"):
                raise ConfigError(
                    f"tensor '{w.prefix}{name}.weight_packed': quantized embedding tables are "
                    "not supported; keep embeddings in bf16 (list them in `ignore`)."
                )
        H, V = cfg.hidden_size, cfg.vocab_size
        embed, embed_tag = w.raw("embed_tokens.weight", (V, H))
        self.embed_table, self.embed_dtype = embed, embed_tag
        self.embed_scale = np.float32(math.sqrt(H))
        self.layers: list[DecoderLayer] = []
        for spec in cfg.layers:
            say(f"layer {spec.index + 1}/{cfg.num_hidden_layers}")
            self.layers.append(DecoderLayer(spec, cfg, w))
        self.norm = w.vector("norm.weight", H)
        if cfg.tie_word_embeddings:
            self.head = Linear(embed, embed_tag, w.prefix + "embed_tokens.weight")
        else:
            lm = "lm_head.weight"
            arr = ckpt.array(lm, (V, H))
            self.head = Linear(arr, _DTYPE_TAGS.get(ckpt.info(lm).dtype, "f32"), lm)
        self.ple = None
        if cfg.has_ple:
            L, P = cfg.num_hidden_layers, cfg.hidden_size_per_layer_input
            table, table_tag = w.raw(
                "embed_tokens_per_layer.weight", (cfg.vocab_size_per_layer_input, L * P)
            )
            self.ple = PerLayerEmbeddings(
                table,
                table_tag,
                w.linear("per_layer_model_projection", L * P, H),
                w.vector("per_layer_projection_norm.weight", P),
                L,
                P,
                H,
                cfg.rms_norm_eps,
            )
        self._freqs = {
            t: inv_freq(cfg.rope[t], next(s.head_dim for s in cfg.layers if s.layer_type == t))
            for t in set(cfg.layer_types)
        }
        self.tokenizer: Tokenizer | None = (
            Tokenizer.from_dir(path) if (path / "tokenizer.json").is_file() else None
        )
        self.chat_template: ChatTemplate | None = ChatTemplate.from_dir(path)
        self.placeholders = PlaceholderIds.from_config(raw)
        self.max_soft_tokens = default_soft_tokens(path)
        self.vision: VisionTower | None = None
        # The unified 12B has no tower (its images are projected patches, not implemented).
        vision_cfg = None
        if raw.get("model_type") == "gemma4":
            vision_cfg = vision_config_from_dict(raw, str(path / "config.json"))
        if vision_cfg is not None and "model.vision_tower.patch_embedder.input_proj.weight" in ckpt:
            say("vision tower")
            self.vision = VisionTower(vision_cfg, H, _Weights(ckpt, "model.", quant))

    # -- bookkeeping --

    @property
    def weight_bytes(self) -> int:
        """Bytes of the checkpoint files (what a memory-mapped model can touch)."""
        return self.checkpoint.total_bytes

    def new_cache(self) -> KVCache:
        """An empty KV cache for this model."""
        return KVCache(self.config.layers, self.config.sliding_window)

    def _check_ids(self, ids: Sequence[int] | np.ndarray, start: int) -> np.ndarray:
        arr = np.asarray(ids)
        if arr.ndim != 1:
            raise InputError(f"token ids must be a 1-D sequence, got shape {arr.shape}.")
        if arr.size == 0:
            raise InputError("the prompt is empty; pass at least one token id (e.g. BOS = 2).")
        if not np.issubdtype(arr.dtype, np.integer):
            raise InputError(f"token ids must be integers, got dtype {arr.dtype}.")
        arr = arr.astype(np.int64)
        limit = self.config.vocab_size
        if self.config.has_ple:
            limit = min(limit, self.config.vocab_size_per_layer_input)
        bad = (arr < 0) | (arr >= limit)
        if bad.any():
            j = int(np.argmax(bad))
            raise InputError(
                f"token id {int(arr[j])} at position {j} is out of range: this model's "
                f"vocabulary has ids 0..{limit - 1}. Was the prompt encoded with another "
                "model's tokenizer?"
            )
        end = start + arr.size
        if end > self.config.max_position_embeddings:
            raise InputError(
                f"{end} tokens exceed max_position_embeddings="
                f"{self.config.max_position_embeddings} in config.json; shorten the prompt."
            )
        return arr

    # -- the forward pass --

    def _run(
        self,
        ids: np.ndarray,
        cache: KVCache,
        last_only: bool,
        trace: Trace | None = None,
        soft: np.ndarray | None = None,
    ) -> np.ndarray:
        """Run tokens through the decoder, appending to `cache`.

        With `last_only`, the KV-consumer layers (and the head) run on the last position
        alone: nothing later reads those layers' states at earlier positions, so this is exact.
        `soft` holds the soft tokens of the images whose placeholders are in `ids`.
        # ids [S], soft [n, H] -> logits [S or 1, V]
        """
        cfg = self.config
        S = ids.size
        pos = np.arange(cache.length, cache.length + S, dtype=np.int64)
        token_ids = self.placeholders.embedding_ids(ids, cfg.pad_token_id or 0)
        x = widen(self.embed_table[token_ids], self.embed_dtype) * self.embed_scale
        q_last = None
        if soft is not None:
            x = merge_soft_tokens(x, ids, soft, self.placeholders)
            if cfg.use_bidirectional_attention == "vision":
                q_last = last_visible(pos, ids, self.placeholders)
        per_layer = self.ple(token_ids, x) if self.ple is not None else None
        if trace is not None:
            trace.per_layer_inputs = per_layer
        ropes = {t: cos_sin(pos, f) for t, f in self._freqs.items()}
        shared: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for layer in self.layers:
            if last_only and layer.spec.index == cfg.first_shared_layer and x.shape[0] > 1:
                x, pos = x[-1:], pos[-1:]
                per_layer = per_layer[-1:] if per_layer is not None else None
                ropes = {t: (c[-1:], s[-1:]) for t, (c, s) in ropes.items()}
                q_last = q_last[-1:] if q_last is not None else None
            pli = per_layer[:, layer.spec.index] if per_layer is not None else None
            x = layer(x, pos, ropes[layer.spec.layer_type], cache, shared, pli, trace, q_last)
        cache.length += S
        if last_only:
            x = x[-1:]
        # the soft-cap is fused into the head's matvec when decoding
        cap = cfg.final_logit_softcapping or 0.0
        return self.head(rms_norm(x, self.norm, cfg.rms_norm_eps), cap)

    def step(
        self,
        ids: Sequence[int] | np.ndarray,
        cache: KVCache,
        last_only: bool = True,
        images: Sequence[Any] | None = None,
        max_soft_tokens: int | None = None,
    ) -> np.ndarray:
        """Feed tokens that continue `cache` (a prompt, or one new token) and return logits.

        With `images`, `ids` are already expanded: each image is `<|image>`, n x `<|image|>`,
        `<image|>` with n its soft-token count (see :meth:`generate` for the short form). An
        image block must lie within one call.
        # ids [S] -> [1, vocab] (last_only) or [S, vocab]
        """
        arr = self._check_ids(ids, cache.length)
        soft = None
        if images is not None:
            rows = self.image_features(images, max_soft_tokens)
            soft = np.concatenate(rows) if rows else np.zeros((0, self.config.hidden_size))
        return self._run(arr, cache, last_only, soft=soft)

    def forward(
        self,
        ids: Sequence[int] | np.ndarray,
        images: Sequence[Any] | None = None,
        max_soft_tokens: int | None = None,
    ) -> np.ndarray:
        """Logits for every position of a fresh prefill (`ids` expanded, as for :meth:`step`).

        # [S] int -> [S, vocab] float32
        """
        return self.step(ids, self.new_cache(), False, images, max_soft_tokens)

    # -- images --

    def process_images(
        self, images: Sequence[Any], max_soft_tokens: int | None = None
    ) -> list[ProcessedImage]:
        """Resize and patchify images (PIL images, file paths or uint8 [H, W, 3] arrays) for
        this model's vision tower; :class:`ProcessedImage` items pass through unchanged.

        `max_soft_tokens` (70, 140, 280, 560 or 1120) defaults to the checkpoint's processor
        config, else 280.
        """
        if self.vision is None:
            raise InputError(
                f"{self.path / 'config.json'} describes no Gemma 4 vision tower (no vision_config "
                "or no model.vision_tower.* tensors), so this model cannot take images. The "
                "unified 12B's encoder-free image path is not implemented yet."
            )
        if not isinstance(images, (list, tuple)):
            raise InputError(
                f"images must be a list (one entry per image), got {type(images).__name__}."
            )
        budget = max_soft_tokens or self.max_soft_tokens
        return [
            im if isinstance(im, ProcessedImage) else process_image(im, budget, f"images[{i}]")
            for i, im in enumerate(images)
        ]

    def image_features(
        self, images: Sequence[Any], max_soft_tokens: int | None = None
    ) -> list[np.ndarray]:
        """Each image's soft tokens in the text width (transformers `get_image_features`).

        # n images -> n x [n_i, H]
        """
        processed = self.process_images(images, max_soft_tokens)
        return [self.vision(p.patches, p.positions, p.name) for p in processed]

    def trace(self, ids: Sequence[int] | np.ndarray) -> Trace:
        """A fresh prefill that also records attention maps, expert choices, PLE updates and
        the residual stream of every layer (see :class:`Trace`)."""
        arr = self._check_ids(ids, 0)
        t = Trace(ids=arr)
        t.logits = self._run(arr, self.new_cache(), last_only=False, trace=t)
        return t

    # -- generation --

    def stream(
        self,
        ids: Sequence[int] | np.ndarray,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        do_sample: bool | None = None,
        cache: KVCache | None = None,
        images: Sequence[Any] | None = None,
        max_soft_tokens: int | None = None,
    ) -> Iterator[int]:
        """Yield new token ids one at a time; stops after an EOS id (which is yielded).

        Arguments left as None come from `generation_config.json`. With `cache`, `ids` continue
        the tokens already in it (multi-turn chat). With `images`, `ids` hold one `<|image|>`
        per image, as the chat template writes it; each is expanded to the image's soft tokens
        here, as transformers' processor does.
        """
        s = Sampling.resolve(self.generation_config, temperature, top_k, top_p, do_sample)
        if max_new_tokens is None:
            max_new_tokens = int(self.generation_config.get("max_new_tokens", 256))
        if max_new_tokens < 0:
            raise InputError(f"max_new_tokens must be >= 0, got {max_new_tokens}.")
        cache = cache if cache is not None else self.new_cache()
        prompt = self._check_ids(ids, cache.length)
        processed = None
        if images is not None or (prompt == self.placeholders.image).any():
            processed = self.process_images(images or [], max_soft_tokens)
            counts = [p.num_soft_tokens for p in processed]
            prompt = expand_images(prompt, counts, self.placeholders)
        rng = np.random.default_rng(seed)
        if max_new_tokens == 0:
            return
        logits = self.step(prompt, cache, images=processed)[-1]
        for n in range(max_new_tokens):
            token = next_token(logits, s, rng)
            yield token
            if token in self.eos_ids or n + 1 == max_new_tokens:
                return
            if cache.length >= self.config.max_position_embeddings:
                return
            logits = self.step([token], cache)[-1]

    def generate(
        self,
        ids: Sequence[int] | np.ndarray,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        do_sample: bool | None = None,
        on_token: Callable[[int], None] | None = None,
        images: Sequence[Any] | None = None,
        max_soft_tokens: int | None = None,
    ) -> list[int]:
        """Generate new tokens (greedy at temperature 0); returns only the new ids.

        `on_token` is called with each id as soon as it exists, for streaming output. `images`
        (PIL images, file paths, uint8 [H, W, 3] arrays or :class:`ProcessedImage`) fill the
        prompt's `<|image|>` placeholders, one each, in order.
        """
        out = []
        for token in self.stream(
            ids,
            max_new_tokens,
            temperature,
            top_k,
            top_p,
            seed,
            do_sample,
            images=images,
            max_soft_tokens=max_soft_tokens,
        ):
            out.append(token)
            if on_token is not None:
                on_token(token)
        return out

    # -- text in, text out --

    def _need_tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            raise InputError(
                f"{self.path} has no tokenizer.json, so this model cannot take text. Copy the "
                "checkpoint's tokenizer.json into the folder, or pass token ids."
            )
        return self.tokenizer

    def render_chat(
        self, messages: list[dict[str, Any]], enable_thinking: bool = False, **template_kwargs
    ) -> str:
        """The prompt text the checkpoint's own chat template makes of `messages`."""
        if self.chat_template is None:
            raise InputError(
                f"{self.path} has no chat_template.jinja and no chat_template in "
                "tokenizer_config.json; add the checkpoint's template to chat with it."
            )
        return self.chat_template.render(
            messages, add_generation_prompt=True, enable_thinking=enable_thinking, **template_kwargs
        )

    def chat(
        self,
        messages: list[dict[str, Any]],
        enable_thinking: bool = False,
        max_new_tokens: int | None = None,
        on_text: Callable[[str], None] | None = None,
        max_soft_tokens: int | None = None,
        **sampling,
    ) -> Response:
        """Answer a conversation; returns the thinking channel and the answer apart.

        Content items `{"type": "image", "image": PIL image | array | path}` (or `"path"` /
        `"url"` naming a local file) put images in the conversation.
        """
        tok = self._need_tokenizer()
        prompt = self.render_chat(messages, enable_thinking)
        images = images_in(messages) or None
        ids = tok.encode(prompt)
        if images is not None and tok.token_to_id("<|image|>") != self.placeholders.image:
            raise InputError(
                f"{self.path}: the tokenizer's <|image|> is id {tok.token_to_id('<|image|>')} "
                f"but config.json's image_token_id is {self.placeholders.image}; the tokenizer "
                "and config come from different checkpoints."
            )
        decoder = StreamDecoder(tok)
        out = []
        stream = self.stream(
            ids, max_new_tokens, images=images, max_soft_tokens=max_soft_tokens, **sampling
        )
        for t in stream:
            out.append(t)
            piece = decoder.push(t)
            if on_text is not None and piece:
                on_text(piece)
        return parse_response(tok.decode(out))


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    return [value] if isinstance(value, int) else [int(v) for v in value]


def load_model(
    path: str | os.PathLike | None = None, progress: Callable[[str], None] | None = None
) -> Model:
    """Load a Gemma 4 checkpoint folder; with no argument, the embedded default in `data/`.

    The folder holds `config.json` and `model.safetensors` (or shards plus
    `model.safetensors.index.json`), and optionally `tokenizer.json`, `tokenizer_config.json`,
    `chat_template.jinja` and `generation_config.json`, exactly as published. Weights are
    memory-mapped, not read: loading is fast and costs little memory until tokens run.
    """
    if path is None:
        path = os.environ.get("GEMMA4_REF_MODEL") or DEFAULT_MODEL
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(
            f"{folder} is not a checkpoint folder. Pass a folder holding config.json and "
            "model.safetensors."
        )
    t0 = time.perf_counter()
    model = Model(folder, progress)
    model.load_seconds = time.perf_counter() - t0
    return model
