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

import numba
import numpy as np
from numba import njit, prange

# Rows widened per BLAS call in the prefill path: about 16 MB of float32 at a time.
_TILE_FLOATS = 4 * 1024 * 1024


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


@njit(parallel=True, cache=True)
def matvec_bf16(w: np.ndarray, x: np.ndarray, out: np.ndarray) -> None:
    """out = W x for bf16 W.  # [out, in] u16, [in] f32 -> [out] f32

    Rows are split over cores in blocks; each row is widened into a per-block float32 buffer and
    reduced with eight independent accumulators, which lets LLVM use SIMD without `fastmath`.
    """
    n_out, n_in = w.shape
    block = 16
    n_blocks = (n_out + block - 1) // block
    n8 = n_in - n_in % 8
    for b in prange(n_blocks):
        bits = np.empty(n_in, np.uint32)
        vals = bits.view(np.float32)
        lo = b * block
        hi = min(lo + block, n_out)
        for o in range(lo, hi):
            row = w[o]
            for i in range(n_in):
                bits[i] = np.uint32(row[i]) << 16
            s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = np.float32(0.0)
            for i in range(0, n8, 8):
                s0 += vals[i] * x[i]
                s1 += vals[i + 1] * x[i + 1]
                s2 += vals[i + 2] * x[i + 2]
                s3 += vals[i + 3] * x[i + 3]
                s4 += vals[i + 4] * x[i + 4]
                s5 += vals[i + 5] * x[i + 5]
                s6 += vals[i + 6] * x[i + 6]
                s7 += vals[i + 7] * x[i + 7]
            tail = np.float32(0.0)
            for i in range(n8, n_in):
                tail += vals[i] * x[i]
            out[o] = ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7)) + tail


@njit(parallel=True, cache=True)
def widen_bf16_rows(w: np.ndarray, out: np.ndarray) -> None:
    """Widen a block of bf16 rows into a float32 buffer.  # [rows, in] u16 -> [rows, in] f32"""
    bits = out.view(np.uint32)
    for r in prange(w.shape[0]):
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

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """y = x W^T.  # [S, in] f32 -> [S, out] f32"""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.dtype == "f32":
            return x @ self.weight.T
        if x.shape[0] == 1 and self.dtype == "bf16":
            out = np.empty(self.out_features, np.float32)
            matvec_bf16(self.weight, x[0], out)
            return out[None, :]
        return _matmul_tiled(x, self.weight, self.dtype)


def numba_threads() -> int:
    """How many threads the kernels use (Numba's pool; NUMBA_NUM_THREADS sets it)."""
    return numba.get_num_threads()
