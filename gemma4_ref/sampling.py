"""Choosing the next token: greedy, or sampled with temperature, top-k and top-p.

The knobs are applied in transformers' order (`generation/utils.py`, the logits-processor list):
temperature first, then top-k, then top-p (nucleus sampling, Holtzman et al. 2019), then a draw
from the softmax of what is left. Gemma 4's `generation_config.json` ships
`do_sample: true, temperature: 1.0, top_k: 64, top_p: 0.95`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InputError


@dataclass(frozen=True)
class Sampling:
    """Resolved sampling settings. `do_sample=False` means greedy (argmax)."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off

    @classmethod
    def resolve(
        cls,
        defaults: dict[str, Any],
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        do_sample: bool | None = None,
    ) -> Sampling:
        """Merge explicit arguments over `generation_config.json` defaults.

        A temperature of 0 means greedy. A positive temperature given without `do_sample`
        turns sampling on.
        """
        if do_sample is None:
            if temperature is not None:
                do_sample = temperature > 0
            else:
                do_sample = bool(defaults.get("do_sample", False))
        t = defaults.get("temperature", 1.0) if temperature is None else temperature
        k = defaults.get("top_k", 0) if top_k is None else top_k
        p = defaults.get("top_p", 1.0) if top_p is None else top_p
        if t is None or t < 0:
            raise InputError(f"temperature must be >= 0, got {t}.")
        if t == 0:
            do_sample = False
        if k is None or k < 0:
            raise InputError(f"top_k must be >= 0 (0 turns it off), got {k}.")
        if p is None or not 0 < p <= 1:
            raise InputError(f"top_p must lie in (0, 1], got {p}.")
        return cls(bool(do_sample), float(t) if t else 1.0, int(k), float(p))


def warp(logits: np.ndarray, s: Sampling) -> np.ndarray:
    """Apply temperature, top-k and top-p; filtered tokens get -inf.  # [V] -> [V]"""
    z = logits.astype(np.float64) / s.temperature
    if 0 < s.top_k < len(z):
        kth = np.partition(z, -s.top_k)[-s.top_k]
        z = np.where(z < kth, -np.inf, z)
    if s.top_p < 1.0:
        order = np.argsort(z, kind="stable")  # ascending, as transformers sorts
        probs = np.exp(z[order] - z[order[-1]])
        probs /= probs.sum()
        cum = np.cumsum(probs)
        drop = cum <= 1.0 - s.top_p
        drop[-1] = False  # always keep the most likely token
        z[order[drop]] = -np.inf
    return z


def next_token(logits: np.ndarray, s: Sampling, rng: np.random.Generator) -> int:
    """Pick one token id from the last position's logits.  # [V] -> int"""
    if not s.do_sample:
        return int(np.argmax(logits))
    z = warp(logits, s)
    p = np.exp(z - z.max())
    p /= p.sum()
    return int(rng.choice(len(p), p=p))
