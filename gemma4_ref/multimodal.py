"""Putting soft tokens into the prompt: placeholders, their expansion, merging, and the block mask.

A prompt carries images, video frames and audio clips as placeholder ids (transformers 5.24,
`Gemma4Processor` and `Gemma4Model.forward`; the unified 12B's processor and model do the same):

* the chat template writes one `<|image|>` per image and one `<|audio|>` per clip; the processor
  expands each to a start token, n soft-token placeholders and an end token, where n is that
  item's soft-token count (`<|image>` n x `<|image|>` `<image|>`, `<|audio>` n x `<|audio|>`
  `<audio|>`; a video frame is `<|image>` n x `<|video|>` `<image|>`);
* every multimodal placeholder (image, video, audio) is looked up as the **pad** token, for the
  main embedding and for the token part of the Per-Layer Embeddings alike;
* each kind's soft tokens then replace that kind's placeholder rows, in order, unscaled (the
  `sqrt(H)` scale applies to text embeddings only); the PLE context part is computed from these
  merged rows;
* on models with `use_bidirectional_attention: "vision"`, each maximal run of image or video
  placeholders is one block whose tokens see each other both ways (see `attention.py`): on the
  sliding layers only for Gemma 4, on every layer for the unified 12B. Start and end tokens,
  text and audio stay causal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InputError


@dataclass(frozen=True)
class PlaceholderIds:
    """The multimodal token ids of a checkpoint (top level of `config.json`)."""

    boi: int = 255_999  # <|image>
    image: int = 258_880  # <|image|>
    eoi: int = 258_882  # <image|>
    video: int = 258_884  # <|video|>
    audio: int = 258_881  # <|audio|>
    boa: int = 256_000  # <|audio>
    eoa: int = 258_883  # <audio|>

    @classmethod
    def from_config(cls, raw: dict[str, Any]) -> PlaceholderIds:
        if "text_config" not in raw:
            # A text-only checkpoint (`Gemma4ForCausalLM`) embeds every id as itself.
            return cls(-1, -1, -1, -1, -1, -1, -1)
        d = cls()

        def pick(field: str, *keys: str) -> int:
            value = next((raw[k] for k in keys if raw.get(k) is not None), None)
            return getattr(d, field) if value is None else int(value)

        return cls(
            boi=pick("boi", "boi_token_id"),
            image=pick("image", "image_token_id"),
            eoi=pick("eoi", "eoi_token_id"),
            video=pick("video", "video_token_id"),
            audio=pick("audio", "audio_token_id"),
            boa=pick("boa", "boa_token_id"),
            # transformers' Gemma4Config spells it eoa_token_index; the unified config, _id
            eoa=pick("eoa", "eoa_token_id", "eoa_token_index"),
        )

    def embedding_ids(self, ids: np.ndarray, pad: int) -> np.ndarray:
        """Placeholders read the pad row of the embedding tables.  # [S] -> [S]"""
        return np.where(np.isin(ids, (self.image, self.video, self.audio)), pad, ids)


def expand_placeholders(
    ids: np.ndarray | Sequence[int],
    replacements: Sequence[Sequence[int]],
    placeholder: int,
    what: str = "image",
) -> np.ndarray:
    """Replace the k-th `placeholder` id by `replacements[k]`, as the processor's
    `replace_image_token`, `replace_audio_token` and `replace_video_token` do in the text
    before tokenizing (the markers are special tokens, so expanding the ids gives the same
    tokens; a video's timestamps are text, see `video.py`).

    # [S] -> [S - len(replacements) + sum(len(r) for r in replacements)]
    """
    ids = np.asarray(ids, dtype=np.int64)
    at = np.flatnonzero(ids == placeholder)
    if len(at) != len(replacements):
        raise InputError(
            f"the prompt holds {len(at)} {what} placeholder(s) (id {placeholder}) but "
            f"{len(replacements)} {what}(s) were given; write one placeholder per {what}, in "
            f"order (a chat message's {{'type': '{what}'}} item does this)."
        )
    pieces, pos = [], 0
    for where, new in zip(at, replacements, strict=True):
        pieces += [ids[pos:where], list(new)]
        pos = where + 1
    pieces.append(ids[pos:])
    return np.concatenate([np.asarray(p, dtype=np.int64) for p in pieces])


def wrapped(start: int, soft: int, n: int, end: int) -> list[int]:
    """One item's run of placeholders: `start`, n x `soft`, `end`."""
    return [start, *[soft] * n, end]


def merge_soft_tokens(
    x: np.ndarray, ids: np.ndarray, soft: dict[int, np.ndarray], tokens: PlaceholderIds
) -> np.ndarray:
    """Write each kind's soft tokens into its placeholders' rows, in order.

    `soft` maps a placeholder id (image, video or audio) to that kind's rows, all items
    concatenated (transformers' `masked_scatter`, once per kind).
    # x [S, H], ids [S], soft {id: [n, H]} -> [S, H]
    """
    names = {tokens.image: "image", tokens.video: "video", tokens.audio: "audio"}
    out = x.copy()
    for token, rows in soft.items():
        slots = ids == token
        if int(slots.sum()) != len(rows):
            raise InputError(
                f"the ids hold {int(slots.sum())} {names.get(token, '')} soft-token placeholders "
                f"(id {token}) but the inputs make {len(rows)} soft tokens. Expand each "
                "placeholder to start, n x placeholder, end with n = that item's soft-token "
                "count (Model.generate and Model.chat do this), and keep each item within one "
                "call."
            )
        out[slots] = rows
    return out


def vision_blocks(ids: np.ndarray, tokens: PlaceholderIds) -> np.ndarray:
    """Each position's image block: transformers' `get_block_sequence_ids_for_mask`.

    Maximal runs of image or video placeholders are numbered 0, 1, ... in order (two adjacent
    images form one block); every other position is -1.
    # ids [S] -> [S] int64
    """
    inside = np.isin(ids, (tokens.image, tokens.video))
    starts = inside & ~np.concatenate([[False], inside[:-1]])
    return np.where(inside, np.cumsum(starts) - 1, -1).astype(np.int64)


def vision_block_bounds(
    pos: np.ndarray, ids: np.ndarray, tokens: PlaceholderIds
) -> tuple[np.ndarray, np.ndarray]:
    """Each position's first and last block position (:func:`vision_blocks`), else its own.

    # pos [S], ids [S] -> first [S], last [S]
    """
    blocks = vision_blocks(ids, tokens)
    first, last = pos.copy(), pos.copy()
    for b in range(int(blocks.max(initial=-1)) + 1):
        at = np.flatnonzero(blocks == b)
        first[at], last[at] = pos[at[0]], pos[at[-1]]
    return first, last
