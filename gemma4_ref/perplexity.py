"""Perplexity on a text corpus: the number that says whether a language model learned anything.

Perplexity is `exp(mean negative log-likelihood)` of the tokens the model predicts. A model that
guesses uniformly over a vocabulary of V tokens scores exactly V; the demo model's held-out
figure is measured against that baseline.

The corpus is cut into non-overlapping windows of `<bos>` + (seq - 1) tokens, the same windows
in training, in `tools/eval_heldout.py` (which measures with transformers) and in the tests
(which measure with this package), so the figures are comparable.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .tokenizer import Tokenizer

BOS = 2


def encode_corpus(tok: Tokenizer, text: str) -> np.ndarray:
    """The text as one token stream. Paragraphs are encoded apart (in parallel) and joined.

    # str -> [n_tokens] uint16
    """
    paras = text.split("\n\n")
    pieces = tok.backend.encode_batch([p + "\n\n" for p in paras], add_special_tokens=False)
    return np.concatenate([np.asarray(e.ids, np.uint16) for e in pieces])


def windows(stream: np.ndarray, seq: int, count: int | None = None) -> np.ndarray:
    """Non-overlapping evaluation windows, each `<bos>` + seq - 1 tokens.  # [n] -> [w, seq]"""
    n = len(stream) // (seq - 1)
    if count is not None:
        n = min(n, count)
    body = np.asarray(stream[: n * (seq - 1)], np.int64).reshape(n, seq - 1)
    return np.concatenate([np.full((n, 1), BOS, np.int64), body], axis=1)


def mean_nll(logits: np.ndarray, ids: np.ndarray) -> float:
    """Mean negative log-likelihood of ids[1:] under logits[:-1].  # [S, V], [S] -> float"""
    z = logits[:-1].astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return float(-log_probs[np.arange(len(ids) - 1), ids[1:]].mean())


def perplexity(
    forward: Callable[[np.ndarray], np.ndarray],
    batch: np.ndarray,
    progress: Callable[[int, int], None] | None = None,
) -> float:
    """exp of the mean NLL over all windows; `forward` maps ids [S] to logits [S, V]."""
    nll = []
    for i, ids in enumerate(batch):
        nll.append(mean_nll(forward(ids), ids))
        if progress is not None:
            progress(i + 1, len(batch))
    return float(np.exp(np.mean(nll)))
