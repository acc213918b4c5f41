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
from .audio import AudioTower, audio_config_from_dict
from .audio_features import AudioFeatures, load_waveform, log_mel_features
from .chat import ChatTemplate, Response, media_in, parse_response
from .checkpoint import DTYPE_TAGS, Checkpoint, TensorSource
from .compressed import QuantizationConfig
from .config import LayerSpec, TextConfig, load_json, load_text_config
from .errors import CheckpointError, ConfigError, InputError
from .image import ProcessedImage, default_soft_tokens, process_image
from .linear import Linear, widen
from .mlp import GatedMLP
from .moe import Experts, route
from .multimodal import (
    PlaceholderIds,
    expand_placeholders,
    merge_soft_tokens,
    vision_block_bounds,
    wrapped,
)
from .norm import rms_norm
from .ple import PerLayerEmbeddings, PerLayerGate
from .rope import apply_rope, cos_sin, inv_freq
from .sampling import Sampling, next_token
from .tokenizer import StreamDecoder, Tokenizer
from .unified import UnifiedFrontEnd, process_unified_image, waveform_frames
from .video import VIDEO_SOFT_TOKENS, ProcessedVideo, process_video
from .vision import VisionTower, vision_config_from_dict

#: Where the embedded default model lives, relative to the repository root.
DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "data" / "gemma4-tiny"


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

    def __init__(self, spec: LayerSpec, cfg: TextConfig, w: TensorSource):
        i, H, hd = spec.index, cfg.hidden_size, spec.head_dim
        p = f"layers.{i}."
        self.spec = spec
        self.eps = cfg.rms_norm_eps
        self.n_heads = cfg.num_attention_heads
        self.window = cfg.sliding_window if spec.is_sliding else 0
        # Where image blocks open the mask: Gemma 4 on sliding layers, inside the window; the
        # unified 12B on every layer, past the window (see attention.py).
        self.blocks_everywhere = cfg.model_type.startswith("gemma4_unified")
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
        blocks: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> np.ndarray:
        """Self-attention; `blocks` (each position's first and last block position, from
        `multimodal.vision_block_bounds`) opens image blocks (see attention.py).

        # h [S, H] (normed), pos [S], blocks ([S], [S]) -> [S, H]
        """
        S, hd = h.shape[0], self.spec.head_dim
        q_first = q_last = None
        if blocks is not None and (self.spec.is_sliding or self.blocks_everywhere):
            first, q_last = blocks
            if self.blocks_everywhere and self.window:
                q_first = np.minimum(pos - self.window + 1, first)
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
        o = attention(q, keys, values, pos, k_pos, self.window, q_last, q_first)
        if trace is not None:
            trace.attention.append(
                attention_probs(q, keys, pos, k_pos, self.window, q_last, q_first)
            )
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

    def __call__(self, x, pos, rope, cache, shared, per_layer_input, trace=None, blocks=None):
        """# x [S, H] -> [S, H]"""
        h = self.attend(
            rms_norm(x, self.input_norm, self.eps), pos, rope, cache, shared, trace, blocks
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


def _load_moe(p: str, cfg: TextConfig, w: TensorSource) -> _MoE:
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

    def __init__(
        self, path: Path, progress: Callable[[str], None] | None = None, weights: str = "auto"
    ):
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
        prefix = ckpt.text_prefix()
        decoder = _decoder_tensors(ckpt, prefix, cfg)
        #: whether the decoder's weights were read into memory (else they are memory-mapped)
        self.resident = _read_into_memory(weights, sum(ckpt.info(n).nbytes for n in decoder))
        if self.resident:
            ckpt.preload(decoder, say)
        w = TensorSource(ckpt, prefix, quant, self.resident)
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
            arr = ckpt.read(lm, (V, H)) if self.resident else ckpt.array(lm, (V, H))
            self.head = Linear(arr, DTYPE_TAGS.get(ckpt.info(lm).dtype, "f32"), lm)
        self.ple = None
        if cfg.has_ple:
            L, P = cfg.num_hidden_layers, cfg.hidden_size_per_layer_input
            # read a row per token: mapped, it costs only the rows touched
            table, table_tag = w.raw(
                "embed_tokens_per_layer.weight",
                (cfg.vocab_size_per_layer_input, L * P),
                mapped=True,
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
        ckpt.drop_preloaded()
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
        # The encoders: Gemma 4's vision and audio towers, or the unified 12B's projections.
        # A checkpoint saved without them (text weights only) loads as a text model.
        self.vision: VisionTower | None = None
        self.audio: AudioTower | None = None
        self.unified: UnifiedFrontEnd | None = None
        self._audio_error: ConfigError | None = None
        source = str(path / "config.json")
        if raw.get("model_type") == "gemma4":
            towers = TensorSource(ckpt, "model.", quant)
            vision_cfg = vision_config_from_dict(raw, source)
            if vision_cfg is not None and towers.has(
                "vision_tower.patch_embedder.input_proj.weight"
            ):
                say("vision tower")
                self.vision = VisionTower(vision_cfg, H, towers)
            if isinstance(raw.get("audio_config"), dict) and towers.has(
                "audio_tower.output_proj.weight"
            ):
                # A tower this code cannot run (transformers builds, but cannot run, one whose
                # first conv is not 128 channels wide) must not stop the text model loading:
                # the error waits for the first clip.
                try:
                    cfg_audio = audio_config_from_dict(raw, source)
                except ConfigError as e:
                    self._audio_error = e
                else:
                    say("audio tower")
                    self.audio = AudioTower(cfg_audio, towers)
        elif raw.get("model_type") == "gemma4_unified" and any(
            n.startswith(("model.vision_embedder.", "model.embed_vision.")) for n in ckpt.tensors
        ):
            say("unified front end")
            self.unified = UnifiedFrontEnd.load(ckpt)

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
        soft: dict[int, np.ndarray] | None = None,
    ) -> np.ndarray:
        """Run tokens through the decoder, appending to `cache`.

        With `last_only`, the KV-consumer layers (and the head) run on the last position
        alone: nothing later reads those layers' states at earlier positions, so this is exact.
        `soft` maps a placeholder id to the soft tokens of the items whose placeholders are in
        `ids` (see :meth:`soft_tokens`).
        # ids [S], soft {id: [n, H]} -> logits [S or 1, V]
        """
        cfg = self.config
        S = ids.size
        pos = np.arange(cache.length, cache.length + S, dtype=np.int64)
        token_ids = self.placeholders.embedding_ids(ids, cfg.pad_token_id or 0)
        x = widen(self.embed_table[token_ids], self.embed_dtype) * self.embed_scale
        blocks = None
        if soft:
            x = merge_soft_tokens(x, ids, soft, self.placeholders)
            if cfg.use_bidirectional_attention == "vision":
                blocks = vision_block_bounds(pos, ids, self.placeholders)
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
                blocks = (blocks[0][-1:], blocks[1][-1:]) if blocks is not None else None
            pli = per_layer[:, layer.spec.index] if per_layer is not None else None
            x = layer(x, pos, ropes[layer.spec.layer_type], cache, shared, pli, trace, blocks)
        cache.length += S
        if last_only:
            x = x[-1:]
        # one call: the head's matvec, then the soft-cap (linear.soft_cap)
        cap = cfg.final_logit_softcapping or 0.0
        return self.head(rms_norm(x, self.norm, cfg.rms_norm_eps), cap)

    def step(
        self,
        ids: Sequence[int] | np.ndarray,
        cache: KVCache,
        last_only: bool = True,
        images: Sequence[Any] | None = None,
        max_soft_tokens: int | None = None,
        audio: Sequence[Any] | None = None,
        videos: Sequence[Any] | None = None,
    ) -> np.ndarray:
        """Feed tokens that continue `cache` (a prompt, or one new token) and return logits.

        With `images` or `audio`, `ids` are already expanded: each image is `<|image>`, n x
        `<|image|>`, `<image|>` and each clip `<|audio>`, n x `<|audio|>`, `<audio|>`, with n its
        soft-token count (see :meth:`generate` for the short form). An item must lie within
        one call.
        # ids [S] -> [1, vocab] (last_only) or [S, vocab]
        """
        arr = self._check_ids(ids, cache.length)
        soft = self.soft_tokens(images, audio, max_soft_tokens, videos)
        return self._run(arr, cache, last_only, soft=soft)

    def forward(
        self,
        ids: Sequence[int] | np.ndarray,
        images: Sequence[Any] | None = None,
        max_soft_tokens: int | None = None,
        audio: Sequence[Any] | None = None,
        videos: Sequence[Any] | None = None,
    ) -> np.ndarray:
        """Logits for every position of a fresh prefill (`ids` expanded, as for :meth:`step`).

        # [S] int -> [S, vocab] float32
        """
        return self.step(ids, self.new_cache(), False, images, max_soft_tokens, audio, videos)

    # -- images and audio --

    def _no_encoder(self, what: str) -> InputError:
        return InputError(
            f"{self.path / 'config.json'} describes no encoder for {what} (no "
            f"{'vision_config' if what == 'images' else 'audio_config'}, or no tower tensors in "
            f"the checkpoint), so this model cannot take {what}. Gemma 4 E2B/E4B take images "
            "and audio; 26B-A4B and 31B images only; 12B images and audio."
        )

    def process_images(
        self, images: Sequence[Any], max_soft_tokens: int | None = None
    ) -> list[ProcessedImage]:
        """Resize and patchify images (PIL images, file paths or uint8 [H, W, 3] arrays) for
        this model's vision tower (16-px patches) or unified front end (48-px patches);
        :class:`ProcessedImage` items pass through unchanged.

        `max_soft_tokens` (70, 140, 280, 560 or 1120) defaults to the checkpoint's processor
        config, else 280.
        """
        if self.vision is None and self.unified is None:
            raise self._no_encoder("images")
        if not isinstance(images, (list, tuple)):
            raise InputError(
                f"images must be a list (one entry per image), got {type(images).__name__}."
            )
        budget = max_soft_tokens or self.max_soft_tokens
        process = process_image if self.unified is None else process_unified_image
        return [
            im if isinstance(im, ProcessedImage) else process(im, budget, f"images[{i}]")
            for i, im in enumerate(images)
        ]

    def image_features(
        self, images: Sequence[Any], max_soft_tokens: int | None = None
    ) -> list[np.ndarray]:
        """Each image's soft tokens in the text width (transformers `get_image_features`).

        # n images -> n x [n_i, H]
        """
        processed = self.process_images(images, max_soft_tokens)
        embed = self.vision if self.unified is None else self.unified.vision
        return [embed(p.patches, p.positions, p.name) for p in processed]

    def process_audio(self, audio: Sequence[Any]) -> list[AudioFeatures | np.ndarray]:
        """Clips ready for this model: log-mel :class:`AudioFeatures` for an audio tower
        (E2B/E4B), 640-sample frames [n, 640] for the unified 12B.

        Each clip is a 1-D float array of 16 kHz samples, a `(samples, sampling_rate)` pair
        or a WAV file path. What this returns passes through unchanged: :class:`AudioFeatures`
        on a tower, [n, 640] frame arrays on the 12B.
        """
        unified_audio = self.unified.audio if self.unified is not None else None
        if self._audio_error is not None:
            raise self._audio_error
        if self.audio is None and unified_audio is None:
            raise self._no_encoder("audio")
        if not isinstance(audio, (list, tuple)):
            raise InputError(
                f"audio must be a list (one entry per clip), got {type(audio).__name__}."
            )
        clips: list[AudioFeatures | np.ndarray] = []
        for i, item in enumerate(audio):
            if (isinstance(item, AudioFeatures) and self.audio is not None) or (
                unified_audio is not None
                and isinstance(item, np.ndarray)
                and item.ndim == 2
                and item.shape[1] == unified_audio.frame
            ):
                clips.append(item)
                continue
            x, rate = load_waveform(item, f"audio[{i}]")
            if unified_audio is not None:
                clips.append(waveform_frames(x, rate, unified_audio.frame))
            else:
                clips.append(log_mel_features(x, rate))
        return clips

    def audio_features(self, audio: Sequence[Any]) -> list[np.ndarray]:
        """Each clip's soft tokens in the text width (transformers `get_audio_features`, the
        padding stripped).  # n clips -> n x [n_i, H]"""
        clips = self.process_audio(audio)
        if self.audio is not None:
            return [self.audio(c.features, c.mask) for c in clips]
        return [self.unified.audio(c) for c in clips]

    def process_videos(
        self, videos: Sequence[Any], max_soft_tokens: int | None = None
    ) -> list[ProcessedVideo]:
        """Sample and process videos: each a `(frames, fps)` pair or bare frames (a list of
        PIL images or a uint8 [F, H, W, 3] array, taken at 24 fps as transformers does); see
        `video.py`. :class:`ProcessedVideo` items pass through unchanged."""
        if self.vision is None and self.unified is None:
            raise self._no_encoder("videos")
        if not isinstance(videos, (list, tuple)):
            raise InputError(
                f"videos must be a list (one entry per video), got {type(videos).__name__}."
            )
        out = []
        for i, v in enumerate(videos):
            if not isinstance(v, ProcessedVideo):
                frames, fps = v if isinstance(v, tuple) else (v, None)
                budget = max_soft_tokens or VIDEO_SOFT_TOKENS
                v = process_video(frames, fps, budget, f"videos[{i}]", self.unified is not None)
            out.append(v)
        return out

    def soft_tokens(
        self,
        images: Sequence[Any] | None = None,
        audio: Sequence[Any] | None = None,
        max_soft_tokens: int | None = None,
        videos: Sequence[Any] | None = None,
    ) -> dict[int, np.ndarray] | None:
        """The soft tokens of every item, concatenated per kind and keyed by the placeholder
        id they replace; None without items.  # -> {id: [n, H]}"""
        soft = {}
        H = self.config.hidden_size
        t = self.placeholders
        rows: list[np.ndarray] = []
        if images is not None:
            rows = self.image_features(images, max_soft_tokens)
            soft[t.image] = np.concatenate(rows) if rows else np.zeros((0, H))
        if audio is not None:
            rows = self.audio_features(audio)
            soft[t.audio] = np.concatenate(rows) if rows else np.zeros((0, H))
        if videos is not None:
            frames = [f for v in self.process_videos(videos, max_soft_tokens) for f in v.frames]
            rows = self.image_features(frames)
            soft[t.video] = np.concatenate(rows) if rows else np.zeros((0, H))
        return soft or None

    def expand_prompt(
        self,
        ids: Sequence[int] | np.ndarray,
        images: Sequence[Any] | None = None,
        audio: Sequence[Any] | None = None,
        max_soft_tokens: int | None = None,
        videos: Sequence[Any] | None = None,
    ) -> tuple[np.ndarray, list[ProcessedImage] | None, list[Any] | None, list | None]:
        """Give each `<|image|>`, `<|audio|>` and `<|video|>` of a short prompt (one per item,
        as the chat template writes them) its run of placeholders, as transformers' processor
        does. Returns the expanded ids and the processed images, clips and videos.

        A video's frames are written `mm:ss <|image>` n x `<|video|>` `<image|>`, separated by
        spaces; the timestamp text is tokenized on its own, which matches transformers'
        text-level expansion wherever the text before `<|video|>` ends at a token boundary
        (after a special token, a space or a newline, as chat templates write it).
        # [S] -> [S'], images, clips, videos
        """
        prompt = np.asarray(ids, dtype=np.int64)
        t = self.placeholders
        processed = clips = vids = None
        if images is not None or (prompt == t.image).any():
            processed = self.process_images(images or [], max_soft_tokens)
            runs = [wrapped(t.boi, t.image, p.num_soft_tokens, t.eoi) for p in processed]
            prompt = expand_placeholders(prompt, runs, t.image, "image")
        if audio is not None or (prompt == t.audio).any():
            clips = self.process_audio(audio or [])
            runs = [
                wrapped(
                    t.boa,
                    t.audio,
                    c.num_soft_tokens if isinstance(c, AudioFeatures) else len(c),
                    t.eoa,
                )
                for c in clips
            ]
            prompt = expand_placeholders(prompt, runs, t.audio, "audio")
        if videos is not None or (prompt == t.video).any():
            vids = self.process_videos(videos or [], max_soft_tokens)
            tok = self._need_tokenizer()
            runs = []
            for v in vids:
                run: list[int] = []
                for k, stamp in enumerate(v.timestamps):
                    run += tok.encode((" " if k else "") + stamp + " ")
                    run += wrapped(t.boi, t.video, v.num_soft_tokens, t.eoi)
                runs.append(run)
            prompt = expand_placeholders(prompt, runs, t.video, "video")
        return prompt, processed, clips, vids

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
        audio: Sequence[Any] | None = None,
        videos: Sequence[Any] | None = None,
    ) -> Iterator[int]:
        """Yield new token ids one at a time; stops after an EOS id (which is yielded).

        Arguments left as None come from `generation_config.json`. With `cache`, `ids` continue
        the tokens already in it (multi-turn chat). With `images` or `audio`, `ids` hold one
        `<|image|>` per image and one `<|audio|>` per clip, as the chat template writes them;
        each is expanded to the item's soft tokens here (:meth:`expand_prompt`).
        """
        s = Sampling.resolve(self.generation_config, temperature, top_k, top_p, do_sample)
        if max_new_tokens is None:
            max_new_tokens = int(self.generation_config.get("max_new_tokens", 256))
        if max_new_tokens < 0:
            raise InputError(f"max_new_tokens must be >= 0, got {max_new_tokens}.")
        cache = cache if cache is not None else self.new_cache()
        prompt = self._check_ids(ids, cache.length)
        prompt, processed, clips, vids = self.expand_prompt(
            prompt, images, audio, max_soft_tokens, videos
        )
        prompt = self._check_ids(prompt, cache.length)
        rng = np.random.default_rng(seed)
        if max_new_tokens == 0:
            return
        logits = self.step(prompt, cache, images=processed, audio=clips, videos=vids)[-1]
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
        audio: Sequence[Any] | None = None,
        videos: Sequence[Any] | None = None,
    ) -> list[int]:
        """Generate new tokens (greedy at temperature 0); returns only the new ids.

        `on_token` is called with each id as soon as it exists, for streaming output. `images`
        (PIL images, file paths, uint8 [H, W, 3] arrays or :class:`ProcessedImage`) fill the
        prompt's `<|image|>` placeholders, one each, in order; `audio` (16 kHz float arrays,
        `(samples, sampling_rate)` pairs, WAV paths or :class:`AudioFeatures`) its `<|audio|>`
        placeholders; `videos` (`(frames, fps)` pairs, see `video.py`) its `<|video|>` ones.
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
            audio=audio,
            videos=videos,
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

        Content items `{"type": "image", "image": PIL image | array | path}` and
        `{"type": "audio", "audio": array | WAV path, "sampling_rate": int}` and
        `{"type": "video", "video": frames, "fps": float}` (or `"path"` / `"url"` naming a
        local image or WAV file) put images, sound and video in the conversation.
        """
        tok = self._need_tokenizer()
        prompt = self.render_chat(messages, enable_thinking)
        images = media_in(messages, "image") or None
        audio = media_in(messages, "audio") or None
        videos = media_in(messages, "video") or None
        ids = tok.encode(prompt)
        for name, given, token in (
            ("<|image|>", images, self.placeholders.image),
            ("<|audio|>", audio, self.placeholders.audio),
        ):
            if given is not None and tok.token_to_id(name) != token:
                raise InputError(
                    f"{self.path}: the tokenizer's {name} is id {tok.token_to_id(name)} but "
                    f"config.json names id {token}; the tokenizer and config come from "
                    "different checkpoints."
                )
        decoder = StreamDecoder(tok)
        out = []
        stream = self.stream(
            ids,
            max_new_tokens,
            images=images,
            max_soft_tokens=max_soft_tokens,
            audio=audio,
            videos=videos,
            **sampling,
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


#: Share of the memory the OS reports available that `weights="auto"` lets the decoder's
#: weights take; past it they stay memory-mapped, so a model larger than RAM still runs.
RESIDENT_SHARE = 0.75
WEIGHTS_MODES = ("auto", "memory", "mmap")


def available_memory() -> int | None:
    """Bytes the OS could hand this process now (Linux `MemAvailable`), None if it won't say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:  # free pages only (no reclaimable cache): the cautious answer
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _decoder_tensors(ckpt: Checkpoint, prefix: str, cfg: TextConfig) -> list[str]:
    """What the decoder reads into memory: its tensors but the Per-Layer-Embedding table
    (mapped: a token reads one row) and the k/v weights KV-shared layers leave unused (the
    checkpoint may hold them), and an untied head."""
    unused = {
        f"{prefix}layers.{spec.index}.self_attn.{part}"
        for spec in cfg.layers
        if spec.shares_kv
        for part in ("k_proj", "v_proj", "k_norm")
    }
    return [
        name
        for name in ckpt.tensors
        if (
            name.startswith(prefix)
            and "embed_tokens_per_layer" not in name
            and name.rsplit(".", 1)[0] not in unused  # e.g. k_proj.weight, k_proj.weight_packed
        )
        or name == "lm_head.weight"
    ]


def _read_into_memory(weights: str, nbytes: int) -> bool:
    if weights not in WEIGHTS_MODES:
        raise InputError(
            f"weights={weights!r} is not a loading mode; use one of {', '.join(WEIGHTS_MODES)}."
        )
    if weights != "auto":
        return weights == "memory"
    free = available_memory()
    return free is not None and nbytes <= RESIDENT_SHARE * free


def load_model(
    path: str | os.PathLike | None = None,
    progress: Callable[[str], None] | None = None,
    weights: str = "auto",
) -> Model:
    """Load a Gemma 4 checkpoint folder; with no argument, the embedded default in `data/`.

    The folder holds `config.json` and `model.safetensors` (or shards plus
    `model.safetensors.index.json`), and optionally `tokenizer.json`, `tokenizer_config.json`,
    `chat_template.jinja` and `generation_config.json`, exactly as published.

    `weights` says where the decoder's weights live. "memory" reads them into the process:
    on the benchmark VM decode then runs at one steady speed, where mapped pages ran 1-30%
    slower depending on the history of the OS's file cache (bench/README.md, "2026-12-01,
    third session"), at the cost of reading the file up front. "mmap" maps them,
    so loading is instant and a model larger than RAM still runs, paged in as kernels touch it.
    "auto" (the default) reads them when they fit in `RESIDENT_SHARE` of the available memory.
    Either way the Per-Layer-Embedding table and the vision and audio towers are mapped: a token
    reads one row of the first, and a text prompt never runs the others.
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
    model = Model(folder, progress, weights)
    model.load_seconds = time.perf_counter() - t0
    return model
