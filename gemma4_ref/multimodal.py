"""Putting soft tokens into the prompt: placeholders, their expansion, merging, and the image mask.

A prompt carries an image as placeholder ids (transformers 5.24, `Gemma4Processor` and
`Gemma4Model.forward`):

* the chat template writes one `<|image|>` per image; the processor expands it to
  `<|image>`, n x `<|image|>`, `<image|>`, where n is that image's soft-token count;
* every multimodal placeholder (image, video, audio) is looked up as the **pad** token, for the
  main embedding and for the token part of the Per-Layer Embeddings alike;
* the soft tokens then replace the image placeholders' rows, in order, unscaled (the
  `sqrt(H)` scale applies to text embeddings only); the PLE context part is computed from these
  merged rows;
* on models with `use_bidirectional_attention: "vision"`, each maximal run of image
  placeholders is one block whose tokens see each other both ways on the sliding layers (see
  `attention.py`); `<|image>` and `<image|>` stay causal.
"""

from __future__ import annotations

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

    @classmethod
    def from_config(cls, raw: dict[str, Any]) -> PlaceholderIds:
        if "text_config" not in raw:
            # A text-only checkpoint (`Gemma4ForCausalLM`) embeds every id as itself.
            return cls(-1, -1, -1, -1, -1)
        d = cls()

        def pick(field: str, key: str) -> int:
            value = raw.get(key)
            return getattr(d, field) if value is None else int(value)

        return cls(
            boi=pick("boi", "boi_token_id"),
            image=pick("image", "image_token_id"),
            eoi=pick("eoi", "eoi_token_id"),
            video=pick("video", "video_token_id"),
            audio=pick("audio", "audio_token_id"),
        )

    def embedding_ids(self, ids: np.ndarray, pad: int) -> np.ndarray:
        """Placeholders read the pad row of the embedding tables.  # [S] -> [S]"""
        return np.where(np.isin(ids, (self.image, self.video, self.audio)), pad, ids)


def expand_images(ids: np.ndarray, counts: list[int], tokens: PlaceholderIds) -> np.ndarray:
    """Replace the k-th `<|image|>` by `<|image>`, counts[k] x `<|image|>`, `<image|>`.

    # [S] -> [S + sum(counts) + len(counts)]
    """
    at = np.flatnonzero(ids == tokens.image)
    if len(at) != len(counts):
        raise InputError(
            f"the prompt holds {len(at)} image placeholder(s) (<|image|>, id {tokens.image}) "
            f"but {len(counts)} image(s) were given; write one <|image|> per image, in order "
            "(a chat message's {'type': 'image'} item does this)."
        )
    pieces, start = [], 0
    for where, n in zip(at, counts, strict=True):
        pieces += [ids[start:where], [tokens.boi], np.full(n, tokens.image), [tokens.eoi]]
        start = where + 1
    pieces.append(ids[start:])
    return np.concatenate([np.asarray(p, dtype=np.int64) for p in pieces])


def merge_soft_tokens(
    x: np.ndarray, ids: np.ndarray, soft: np.ndarray, tokens: PlaceholderIds
) -> np.ndarray:
    """Write the soft tokens into the image placeholders' rows, in order.

    # x [S, H], ids [S], soft [n, H] -> [S, H]
    """
    slots = ids == tokens.image
    if int(slots.sum()) != len(soft):
        raise InputError(
            f"the ids hold {int(slots.sum())} image soft-token placeholders (id {tokens.image}) "
            f"but the images make {len(soft)} soft tokens. Expand each image's <|image|> to "
            "<|image>, n x <|image|>, <image|> with n = its num_soft_tokens (Model.generate and "
            "Model.chat do this), or pass one image per block."
        )
    out = x.copy()
    out[slots] = soft
    return out


def last_visible(pos: np.ndarray, ids: np.ndarray, tokens: PlaceholderIds) -> np.ndarray:
    """Each query's last visible key position: the end of its image block, else itself.

    A block is a maximal run of image placeholders, as transformers'
    `get_block_sequence_ids_for_mask` finds them (two adjacent images form one block).
    # pos [S], ids [S] -> [S]
    """
    inside = ids == tokens.image
    last = pos.copy()
    edges = np.diff(np.concatenate([[0], inside.astype(np.int8), [0]]))
    for start, end in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True):
        last[start:end] = pos[end - 1]
    return last
