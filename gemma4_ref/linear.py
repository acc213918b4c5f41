"""Linear layers over weights kept in their checkpoint dtype (bf16, fp16 or fp32).

Gemma 4 ships in bfloat16. NumPy has no bfloat16, but a bf16 number is just the top 16 bits of
an IEEE float32, so widening is a shift: `float32_bits = uint32(bf16_bits) << 16`. Weights stay
16-bit in memory (a `uint16` view of the memory-mapped file) and are widened inside the kernels,
one row at a time, so there is never an fp32 copy of the model.

Decode (one token) is a matrix-vector product whose speed is set by how fast the weights stream
from memory; the Numba kernel splits the output rows over all cores. Prefill (many tokens) widens
a tile of rows at a time and hands it to BLAS.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numba
import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

if TYPE_CHECKING:
    from .int4 import QuantizedLinear

# Rows widened per BLAS call in the prefill path: about 16 MB of float32 at a time.
_TILE_FLOATS = 4 * 1024 * 1024
#: Matrices with fewer weights than this run their matvec on one core (dev bench:
#: bench/kernels/matvec_bf16.py; a 256 x 1536 bf16 matvec is twice as fast serial).
SERIAL_BELOW = 1 << 20


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """Widen bfloat16 bits (as uint16) to float32, exactly.  # [...] u16 -> [...] f32"""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 bits with round-to-nearest-even, as torch does.  # f32 -> u16

    NaN stays NaN (its quiet bit is forced on so rounding cannot turn it into infinity).
    """
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    out = ((bits + rounding) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        out[nan] = ((bits[nan] >> 16) | 0x40).astype(np.uint16)
    return out


def widen(w: np.ndarray, dtype: str) -> np.ndarray:
    """Any stored weight (bf16 bits, fp16 or fp32) as float32.  # [...] -> [...] f32"""
    if dtype == "bf16":
        return bf16_to_f32(w)
    return np.asarray(w, dtype=np.float32)


# --- reference ------------------------------------------------------------------------------


def linear_ref(x: np.ndarray, w: np.ndarray, dtype: str) -> np.ndarray:
    """y = x W^T, the plain NumPy way.  # [S, in], [out, in] -> [S, out]"""
    return x @ widen(w, dtype).T


# --- Numba kernels ----------------------------------------------------------------------------


@intrinsic
def bits_to_f32(typingctx, bits):
    """Reinterpret uint32 bits as a float32 inside a kernel (what C does with memcpy)."""
    sig = types.float32(types.uint32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float32))

    return sig, codegen


@intrinsic
def f32_to_bits(typingctx, value):
    """Reinterpret a float32 as its uint32 bits inside a kernel."""
    sig = types.uint32(types.float32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.uint32))

    return sig, codegen


# `reassoc` lets LLVM split the dot product over SIMD lanes; the sum then runs in another order
# than NumPy's, which `tests/test_kernels.py` bounds at a relative 1e-5.
@njit(cache=True, fastmath={"reassoc", "contract"})
def matvec_bf16_rows(w, x, out, lo, hi, cap):
    """out[lo:hi] = W[lo:hi] x for bf16 W, on one core.  # [out, in] u16, [in] f32 -> [out] f32

    One pass over each row: widen (a shift and a bit-cast) and multiply-add. With `cap` > 0
    the result is soft-capped, `cap * tanh(y / cap)`, while it is still in a register: that is
    the fused head (Gemma 4 caps its final logits at 30).
    """
    for o in range(lo, hi):
        row = w[o]  # a whole row as one slice: Numba vectorises fixed-extent loops best
        acc = np.float32(0.0)
        for i in range(row.shape[0]):
            acc += bits_to_f32(np.uint32(row[i]) << 16) * x[i]
        out[o] = cap * np.tanh(acc / cap) if cap > 0 else acc


@njit(cache=True, fastmath={"reassoc", "contract"})
def matvec_bf16_streams(w, x, out, lo, hi, cap):
    """matvec_bf16_rows, four far-apart rows at a time.  # [out, in] u16, [in] f32 -> [out] f32

    Rows j, j + q, j + 2q and j + 3q of the block (q = a quarter of it) are multiplied in one
    pass over x. Why: one core's hardware prefetcher follows a sequential stream only up to
    the end of a 4 KB page, so a single stream leaves memory idle; four streams in four
    distant pages keep more reads in flight. On the 2-core Xeon of bench/README.md this reads
    1.5x faster than one row at a time (bench/kernels/matvec_bf16.py).
    """
    q = (hi - lo) // 4
    for o in range(lo, lo + q):
        r0, r1, r2, r3 = w[o], w[o + q], w[o + 2 * q], w[o + 3 * q]
        a0 = a1 = a2 = a3 = np.float32(0.0)
        for i in range(r0.shape[0]):
            xi = x[i]
            a0 += bits_to_f32(np.uint32(r0[i]) << 16) * xi
            a1 += bits_to_f32(np.uint32(r1[i]) << 16) * xi
            a2 += bits_to_f32(np.uint32(r2[i]) << 16) * xi
            a3 += bits_to_f32(np.uint32(r3[i]) << 16) * xi
        if cap > 0:
            a0, a1 = cap * np.tanh(a0 / cap), cap * np.tanh(a1 / cap)
            a2, a3 = cap * np.tanh(a2 / cap), cap * np.tanh(a3 / cap)
        out[o], out[o + q], out[o + 2 * q], out[o + 3 * q] = a0, a1, a2, a3
    matvec_bf16_rows(w, x, out, lo + 4 * q, hi, cap)  # the last (hi - lo) % 4 rows


@njit(parallel=True, cache=True)
def matvec_bf16_parallel(w, x, out, chunks, cap):
    """matvec_bf16_streams over `chunks` contiguous blocks of rows, spread over the cores."""
    n_out = w.shape[0]
    step = -(-n_out // chunks)
    for c in prange(chunks):
        matvec_bf16_streams(w, x, out, c * step, min(n_out, (c + 1) * step), cap)


def matvec_bf16(w: np.ndarray, x: np.ndarray, cap: float = 0.0) -> np.ndarray:
    """y = W x for bf16 W, optionally soft-capped.  # [out, in] u16, [in] f32 -> [out] f32

    Decode streams each weight from memory once, so one core cannot keep up (it reads about
    half the machine's bandwidth): large matrices are split into contiguous blocks of rows,
    two per thread, each read as four streams (:func:`matvec_bf16_streams`). Small ones
    (under `SERIAL_BELOW` weights, e.g. PLE's 256 x 1536 gates) stay on one core, one row at a
    time: they are read faster that way than on the thread pool or as streams (dev bench).
    """
    out = np.empty(w.shape[0], np.float32)
    if w.size < SERIAL_BELOW:
        matvec_bf16_rows(w, x, out, 0, w.shape[0], np.float32(cap))
    else:
        matvec_bf16_parallel(w, x, out, 2 * numba.get_num_threads(), np.float32(cap))
    return out


@njit(cache=True)
def widen_bf16_rows(w: np.ndarray, out: np.ndarray) -> None:
    """Widen a block of bf16 rows into a float32 buffer.  # [rows, in] u16 -> [rows, in] f32

    On one core on purpose: prefill alternates this with BLAS calls, and Numba's OpenMP
    threads, spinning between regions, fought OpenBLAS's (and torch's, when it is loaded) for
    the 2 cores: E2B prefill 128 ran 1.34 s with a parallel widen, 1.22 s without, and the
    demo model's perplexity beside torch 16x slower.
    """
    bits = out.view(np.uint32)
    for r in range(w.shape[0]):
        for i in range(w.shape[1]):
            bits[r, i] = np.uint32(w[r, i]) << 16


def _matmul_tiled(x: np.ndarray, w: np.ndarray, dtype: str) -> np.ndarray:
    """Prefill: widen W tile by tile and let BLAS multiply.  # [S, in], [out, in] -> [S, out]"""
    n_out, n_in = w.shape
    y = np.empty((x.shape[0], n_out), np.float32)
    rows = max(1, min(n_out, _TILE_FLOATS // max(n_in, 1)))
    buf = np.empty((rows, n_in), np.float32)
    for lo in range(0, n_out, rows):
        hi = min(lo + rows, n_out)
        tile = buf[: hi - lo]
        if dtype == "bf16":
            widen_bf16_rows(w[lo:hi], tile)
        else:
            tile[...] = w[lo:hi]
        y[:, lo:hi] = x @ tile.T
    return y


class Linear:
    """A bias-free linear layer whose weight stays in its stored dtype.

    `weight` is [out_features, in_features], as `torch.nn.Linear` stores it.
    """

    def __init__(self, weight: np.ndarray, dtype: str, name: str = ""):
        if dtype not in ("bf16", "f16", "f32"):
            raise ValueError(f"{name}: unsupported weight dtype {dtype}")
        self.weight = weight
        self.dtype = dtype
        self.name = name

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def nbytes(self) -> int:
        return self.weight.nbytes

    def __call__(self, x: np.ndarray, cap: float = 0.0) -> np.ndarray:
        """y = x W^T, then `cap * tanh(y / cap)` if `cap` > 0.  # [S, in] f32 -> [S, out] f32"""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.shape[0] == 1 and self.dtype == "bf16":
            return matvec_bf16(self.weight, x[0], cap)[None, :]
        y = x @ self.weight.T if self.dtype == "f32" else _matmul_tiled(x, self.weight, self.dtype)
        if cap > 0:
            y = np.float32(cap) * np.tanh(y / np.float32(cap))
        return y


def numba_threads() -> int:
    """How many threads the kernels use (Numba's pool; NUMBA_NUM_THREADS sets it)."""
    return numba.get_num_threads()


class ClippedLinear:
    """`clamp(W clamp(x, in_min, in_max), out_min, out_max)`; a plain linear without bounds.

    (transformers `Gemma4ClippableLinear`; the bounds are 0-d tensors in the checkpoint.)
    """

    def __init__(
        self,
        linear: Linear | QuantizedLinear,
        bounds: tuple[np.float32, np.float32, np.float32, np.float32] | None,
    ):
        self.linear = linear
        self.bounds = bounds

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """# [S, in] -> [S, out]"""
        if self.bounds is None:
            return self.linear(x)
        in_min, in_max, out_min, out_max = self.bounds
        return np.clip(self.linear(np.clip(x, in_min, in_max)), out_min, out_max)
