"""Hybrid sliding/global attention and the KV cache that serves it.

Gemma 4 interleaves two kinds of layer (transformers 5.24, `Gemma4TextAttention`):

* **sliding** layers see a window of W keys *including the current token* (W - 1 past ones;
  W = 512 on E2B/E4B, 1024 on the larger models), so their cache is a ring buffer of W slots
  and their memory stays bounded at any context length;
* **global** ("full") layers see every earlier token; their cache grows.

Both use grouped-query attention (several query heads share one key/value head), q/k RMSNorm
with weights, a weight-free RMSNorm on values, and a score scale of **1.0** (the q/k norms take
the place of the usual 1/sqrt(d)). There is no attention soft-cap.

Every cached key carries its absolute position, so a single rule builds every mask: key j is
visible to query i iff `pos_j <= pos_i` and, on sliding layers, `pos_j > pos_i - W`. Empty ring
slots hold position -1 and are never visible.

Images bend the causal half of that rule. On the models whose config says
`use_bidirectional_attention: "vision"` (26B, 31B), the soft tokens of one image see each other
both ways on the sliding layers (transformers 5.24, `create_masks_for_vision_model`: sliding =
`(causal OR same image) AND window`; global layers stay causal). So each query gets a *last
visible position* `q_last`: its own position, or the last position of its image. The rule
becomes `pos_j <= q_last_i` and, on sliding layers, `pos_j > pos_i - W`; without images
`q_last = pos` and nothing changes. A vision encoder is the extreme case: every patch's
`q_last` is the last patch, so attention is fully bidirectional.

The unified 12B bends the window too: there a block's tokens see each other on *every* layer,
even where the block is longer than the window (`(causal AND window) OR same block`). Both
halves of that rule are intervals that meet at the query, so their union is one interval
again: each query gets a *first visible position* `q_first` as well, the smaller of
`pos - W + 1` and its block's first position, and the rule is simply
`q_first_i <= pos_j <= q_last_i`. Without it, `q_first = pos - W + 1` on sliding layers and
0 on global ones, the plain window.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


def visible(
    q_pos: np.ndarray,
    k_pos: np.ndarray,
    window: int,
    q_last: np.ndarray | None = None,
    q_first: np.ndarray | None = None,
) -> np.ndarray:
    """The attention mask as booleans; `q_last` defaults to `q_pos` (causal), `q_first` to
    the window's first position (`q_pos - window + 1`, or none on a global layer).

    # [S], [T], q_last [S], q_first [S] -> [S, T]
    """
    last = q_pos if q_last is None else q_last
    ok = (k_pos[None, :] <= last[:, None]) & (k_pos[None, :] >= 0)
    if q_first is not None:
        ok &= k_pos[None, :] >= q_first[:, None]
    elif window:
        ok &= k_pos[None, :] > q_pos[:, None] - window
    return ok


def attention_probs(
    q: np.ndarray,
    k: np.ndarray,
    q_pos: np.ndarray,
    k_pos: np.ndarray,
    window: int,
    q_last: np.ndarray | None = None,
    q_first: np.ndarray | None = None,
) -> np.ndarray:
    """The softmax attention weights themselves, for looking at.

    # q [S, nH, D], k [T, nKV, D] -> [nH, S, T]
    """
    k_full = np.repeat(k, q.shape[1] // k.shape[1], axis=1)
    scores = np.einsum("shd,thd->hst", q, k_full)
    return masked_softmax(scores, visible(q_pos, k_pos, window, q_last, q_first))


_SMALLEST_NORMAL = np.float32(np.finfo(np.float32).tiny)


def masked_softmax(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Softmax over the visible keys only.  # scores [..., S, T], mask [S, T] -> [..., S, T] f32"""
    scores = np.where(mask, scores, np.float32(-np.inf))
    scores -= scores.max(axis=-1, keepdims=True)
    p = np.exp(scores)
    # Weights below float32's smallest normal number (1.2e-38) go to 0: they change no sum
    # that matters, and subnormal operands slow a CPU's multiplies down tenfold (E2B's global
    # layers, D = 512: P V took 9 ms instead of 1 at 128 tokens).
    p[p < _SMALLEST_NORMAL] = 0.0
    return (p / p.sum(axis=-1, keepdims=True)).astype(np.float32)


def attention_ref(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    q_pos: np.ndarray,
    k_pos: np.ndarray,
    window: int,
    q_last: np.ndarray | None = None,
    q_first: np.ndarray | None = None,
) -> np.ndarray:
    """Masked softmax attention with scale 1 and GQA, the plain NumPy way.

    # q [S, nH, D], k/v [T, nKV, D], q_pos [S], k_pos [T], q_last/q_first [S] -> [S, nH, D]
    """
    p = attention_probs(q, k, q_pos, k_pos, window, q_last, q_first)
    v_full = np.repeat(v, q.shape[1] // v.shape[1], axis=1)  # [T, nH, D]
    return np.einsum("hst,thd->shd", p, v_full).astype(np.float32)


# `reassoc` lets LLVM vectorise the two length-D loops (q.k and the weighted sum of v); the
# sums then run in another order than NumPy's (tests/test_kernels.py bounds it). No other
# fast-math flag: the masked scores are -inf on purpose.
@njit(parallel=True, cache=True, fastmath={"reassoc", "contract"})
def _attention_kernel(q, k, v, q_first, q_last, k_pos, out):
    # q [S, nH, D], k/v [T, nKV, D] -> out [S, nH, D]; one (query, head) pair per task.
    # Query s sees the keys at positions q_first[s] .. q_last[s] (empty slots are -1).
    s_len, n_heads, d = q.shape
    t_len, n_kv = k.shape[0], k.shape[1]
    group = n_heads // n_kv
    for task in prange(s_len * n_heads):
        s = task // n_heads
        h = task % n_heads
        kvh = h // group
        first = q_first[s]
        last = q_last[s]
        qv = q[s, h]  # [D], contiguous like each key and value row below
        scores = np.empty(t_len, np.float32)
        best = -np.inf
        for t in range(t_len):
            kp = k_pos[t]
            if kp < 0 or kp > last or kp < first:
                scores[t] = -np.inf
                continue
            kv = k[t, kvh]
            acc = np.float32(0.0)
            for i in range(d):
                acc += qv[i] * kv[i]
            scores[t] = acc
            if acc > best:
                best = acc
        total = np.float32(0.0)
        for t in range(t_len):
            if scores[t] == -np.inf:
                scores[t] = 0.0
            else:
                scores[t] = np.exp(scores[t] - best)
                total += scores[t]
        o = out[s, h]
        o[:] = 0.0
        for t in range(t_len):
            w = scores[t] / total
            if w >= _SMALLEST_NORMAL:  # as masked_softmax: subnormal weights count as 0
                vv = v[t, kvh]
                for i in range(d):
                    o[i] += w * vv[i]


#: Prompts of at least this many tokens take the BLAS path (`attention_blocked`).
BLOCKED_FROM = 16


def attention_blocked(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    q_pos: np.ndarray,
    k_pos: np.ndarray,
    window: int,
    q_last: np.ndarray | None = None,
    q_first: np.ndarray | None = None,
    block: int = 256,
) -> np.ndarray:
    """Prefill attention as matrix products: per KV head, `Q K^T`, mask, softmax, `P V`.

    # q [S, nH, D], k/v [T, nKV, D], q_pos [S], k_pos [T] -> [S, nH, D]
    A long prompt makes S x T scores per head; computing them a key at a time (the Numba
    kernel) leaves the cores' vector units idle, while BLAS runs them near peak. Queries go in
    blocks of `block`, so the scores stay at nH x block x T floats however long the prompt.
    """
    S, n_heads, d = q.shape
    n_kv = k.shape[1]
    group = n_heads // n_kv
    out = np.empty((S, n_heads, d), np.float32)
    for lo in range(0, S, block):
        hi = min(lo + block, S)
        first = None if q_first is None else q_first[lo:hi]
        last = None if q_last is None else q_last[lo:hi]
        mask = visible(q_pos[lo:hi], k_pos, window, last, first)  # [s, T]
        for h in range(n_kv):
            qg = q[lo:hi, h * group : (h + 1) * group].transpose(1, 0, 2)  # [g, s, D]
            p = masked_softmax(qg @ k[:, h].T, mask)  # [g, s, T]
            out[lo:hi, h * group : (h + 1) * group] = (p @ v[:, h]).transpose(1, 0, 2)
    return out


def attention(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    q_pos: np.ndarray,
    k_pos: np.ndarray,
    window: int,
    q_last: np.ndarray | None = None,
    q_first: np.ndarray | None = None,
) -> np.ndarray:
    """Attention for the model: the Numba kernel for a few queries (decode), BLAS for a prompt
    (:func:`attention_blocked`). Both agree with :func:`attention_ref`.  # -> [S, nH, D]"""
    q = np.ascontiguousarray(q, np.float32)
    k = np.ascontiguousarray(k, np.float32)
    v = np.ascontiguousarray(v, np.float32)
    if q.shape[0] >= BLOCKED_FROM:
        return attention_blocked(q, k, v, q_pos, k_pos, window, q_last, q_first)
    if q_first is None:
        q_first = q_pos - window + 1 if window else np.zeros_like(q_pos)
    out = np.empty(q.shape, np.float32)
    _attention_kernel(
        q,
        k,
        v,
        q_first.astype(np.int64),
        (q_pos if q_last is None else q_last).astype(np.int64),
        k_pos.astype(np.int64),
        out,
    )
    return out


class LayerCache:
    """Keys and values of one layer, with their positions.

    A sliding layer (``window > 0``) keeps a ring buffer of exactly ``window`` slots: after a
    token at position p is written, the buffer holds positions p - W + 1 .. p, all that any
    later query can see. A global layer's buffer grows by doubling.
    """

    def __init__(self, n_kv: int, head_dim: int, window: int):
        self.window = window
        cap = window if window else 64
        self.k = np.zeros((cap, n_kv, head_dim), np.float32)
        self.v = np.zeros((cap, n_kv, head_dim), np.float32)
        self.pos = np.full(cap, -1, np.int64)
        self.length = 0  # tokens written so far (global layers: also the filled prefix)

    def extend(
        self, k: np.ndarray, v: np.ndarray, pos: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Append new keys/values and return what this step's queries attend over.

        Returns the cached entries followed by the new ones, so a multi-token prefill sees its
        own keys even where the ring buffer cannot hold them all.
        # k, v [S, nKV, D], pos [S] -> ([T, nKV, D], [T, nKV, D], [T])
        """
        if self.window and len(pos) == 1:
            # Decode: the new token's slot held position p - W, which it cannot see, so after
            # the write the ring is exactly its window. Attend over the ring in place (empty
            # slots have position -1), with no copy; the order of keys does not matter.
            slot = pos[0] % self.window
            self.k[slot], self.v[slot], self.pos[slot] = k[0], v[0], pos[0]
            self.length += 1
            return self.k, self.v, self.pos
        if self.window:
            filled = self.pos >= 0
            keys = np.concatenate([self.k[filled], k])
            vals = np.concatenate([self.v[filled], v])
            kpos = np.concatenate([self.pos[filled], pos])
            # Only the last W new entries can ever be seen again.
            tail = slice(max(0, len(pos) - self.window), len(pos))
            slots = pos[tail] % self.window
            self.k[slots] = k[tail]
            self.v[slots] = v[tail]
            self.pos[slots] = pos[tail]
            self.length += len(pos)
            return keys, vals, kpos
        need = self.length + len(pos)
        if need > len(self.pos):
            cap = max(need, 2 * len(self.pos))
            for name in ("k", "v"):
                old = getattr(self, name)
                new = np.zeros((cap, *old.shape[1:]), np.float32)
                new[: self.length] = old[: self.length]
                setattr(self, name, new)
            pos_new = np.full(cap, -1, np.int64)
            pos_new[: self.length] = self.pos[: self.length]
            self.pos = pos_new
        self.k[self.length : need] = k
        self.v[self.length : need] = v
        self.pos[self.length : need] = pos
        self.length = need
        return self.k[:need], self.v[:need], self.pos[:need]

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes + self.pos.nbytes


class KVCache:
    """One :class:`LayerCache` per layer that computes keys; KV-sharing consumers get none."""

    def __init__(self, layers: list, sliding_window: int):
        self.layers: dict[int, LayerCache] = {}
        for spec in layers:
            if not spec.shares_kv:
                window = sliding_window if spec.is_sliding else 0
                self.layers[spec.index] = LayerCache(spec.num_kv_heads, spec.head_dim, window)
        self.length = 0  # tokens processed so far; the next token's position

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.layers.values())
