"""Linear layers over weights kept in their checkpoint dtype (bf16, fp16 or fp32).

Gemma 4 ships in bfloat16. NumPy has no bfloat16, but a bf16 number is just the top 16 bits of
an IEEE float32, so widening is a shift: `float32_bits = uint32(bf16_bits) << 16`. Weights stay
16-bit in memory (a `uint16` array, read from the file or a view of its memory map) and are
widened inside the kernels, one row at a time, so there is never an fp32 copy of the model.

Decode (one token) is a matrix-vector product whose speed is set by how fast the weights stream
from memory; the Numba kernel splits the output rows over all cores. Prefill (many tokens) widens
a tile of rows at a time and hands it to BLAS.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import simd

if TYPE_CHECKING:
    from .int4 import QuantizedLinear

# Rows widened per BLAS call in the prefill path: about 16 MB of float32 at a time.
_TILE_FLOATS = 4 * 1024 * 1024
#: Prefills of up to this many tokens multiply as W x^T (see `matmul_tiles`)
WX_TOKENS = 256
#: Prefill tiles with fewer weights than this are widened or dequantized on one core: a thread
#: pool of our own between BLAS calls fights OpenBLAS's threads for the cores.
SERIAL_BELOW = 1 << 20
#: Decode matvecs (bf16 and int4) with fewer weights than this run on one core. E2B's smallest,
#: the 256 x 1536 k/v projections and PLE gates, gain from two: bf16 decode 168 -> 163 ms a step.
MATVEC_SERIAL_BELOW = 1 << 16


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
def matvec_bf16_rows(w, x, out, lo, hi):
    """out[lo:hi] = W[lo:hi] x for bf16 W, on one core.  # [out, in] u16, [in] f32 -> [out] f32

    One pass over each row: widen (a shift and a bit-cast) and multiply-add.
    """
    for o in range(lo, hi):
        row = w[o]  # a whole row as one slice: Numba vectorises fixed-extent loops best
        acc = np.float32(0.0)
        for i in range(row.shape[0]):
            acc += bits_to_f32(np.uint32(row[i]) << 16) * x[i]
        out[o] = acc


def _bf16_rows_dot(n_rows: int, ahead: int = simd.PREFETCH_BYTES):
    """An intrinsic: out[r0 + k * stride] = row (r0 + k * stride) of W dotted with x, k < n_rows.

    The loop :func:`matvec_bf16_rows` runs, written in LLVM IR (:mod:`simd`) for two things
    Numba's own loop lacks. Each 64-byte line of a row is one <16 x i32> load: lane i holds
    weights 2i (low half) and 2i + 1 (high half), so a shift and a mask widen both halves to
    float32 with no shuffle, against x split into its even and odd entries. And each row
    stream prefetches `ahead` bytes ahead (0: none), past the 4 KB page where the hardware
    prefetcher stops.
    """

    @intrinsic
    def rows_dot(typingctx, w, x_even, x_odd, out, r0, stride):
        # w u16 [out, in] (in % 32 == 0), x_even/x_odd f32 [in/2], out f32 [out]; C-contiguous
        arrays = (w, x_even, x_odd, out)
        want = [(types.uint16, 2), (types.float32, 1), (types.float32, 1), (types.float32, 1)]
        if not simd.c_arrays_match(arrays, want):
            return None  # Numba reports the mismatch as a typing error
        sig = types.void(*arrays, types.int64, types.int64)

        def codegen(context, builder, signature, args):
            wa, xe, xo, o = simd.array_structs(context, builder, signature, args, 4)
            r0, stride = args[4], args[5]
            n_in = cgutils.unpack_tuple(builder, wa.shape)[1]
            lines = simd.I32X16.as_pointer()
            index = simd.strided_rows(builder, r0, stride, n_rows)
            starts = [builder.gep(wa.data, [builder.mul(r, n_in)]) for r in index]
            rows = [builder.bitcast(start, lines) for start in starts]
            sums = simd.zero_sums(builder, 2 * n_rows)
            n_lines = builder.udiv(n_in, ir.Constant(simd.I64, 32))
            with cgutils.for_range(builder, n_lines) as loop:
                j = loop.index
                at = builder.mul(j, ir.Constant(simd.I64, 16))
                x_lo = simd.load_vector(builder, xe.data, at, simd.F32X16, 4)
                x_hi = simd.load_vector(builder, xo.data, at, simd.F32X16, 4)
                for k in range(n_rows):
                    if ahead:
                        simd.prefetch(builder, rows[k], j, ahead)
                    pair = simd.load_vector(builder, rows[k], j, simd.I32X16, 2)
                    w_lo = builder.bitcast(builder.shl(pair, simd.splat_i32(16)), simd.F32X16)
                    w_hi = builder.bitcast(builder.and_(pair, simd.splat_i32(-65536)), simd.F32X16)
                    simd.accumulate(builder, sums[2 * k], w_lo, x_lo)
                    simd.accumulate(builder, sums[2 * k + 1], w_hi, x_hi)
            simd.store_row_sums(builder, sums, o.data, index)
            return context.get_dummy_value()

        return sig, codegen

    return rows_dot


_bf16_four_rows = _bf16_rows_dot(4)
_bf16_one_row = _bf16_rows_dot(1)


@njit(cache=True)
def matvec_bf16_lines(w, x_even, x_odd, out, lo, hi):
    """out[lo:hi] = W[lo:hi] x, 32 weights a step, on one core.

    # w u16 [out, in] (in % 32 == 0), x_even/x_odd f32 [in/2] -> out f32 [out]
    Rows j, j + q, j + 2q and j + 3q of the block (q = a quarter of it) go together: four
    read streams in four distant pages keep more reads in flight than one (1.5x on the Xeon
    of bench/README.md), and each x vector serves four rows.
    """
    q = (hi - lo) // 4
    for r in range(lo, lo + q):
        _bf16_four_rows(w, x_even, x_odd, out, r, q)
    for r in range(lo + 4 * q, hi):
        _bf16_one_row(w, x_even, x_odd, out, r, 0)


@njit(parallel=True, cache=True)
def matvec_bf16_parallel(w, x_even, x_odd, out, chunks):
    """matvec_bf16_lines over `chunks` contiguous blocks of rows, spread over the cores."""
    n_out = w.shape[0]
    step = -(-n_out // chunks)
    for c in prange(chunks):
        matvec_bf16_lines(w, x_even, x_odd, out, c * step, min(n_out, (c + 1) * step))


def even_odd(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x split into its even and odd entries, each contiguous.  # [in] -> [in/2], [in/2]

    The decode kernels read weights in pairs (2i, 2i + 1: the halves of a 32-bit bf16 pair, the
    nibbles of an int4 byte), and meet each half against contiguous inputs.
    """
    return np.ascontiguousarray(x[0::2]), np.ascontiguousarray(x[1::2])


def soft_cap(y: np.ndarray, cap: float) -> np.ndarray:
    """y -> cap * tanh(y / cap) in place, if cap > 0 (Gemma 4 caps its final logits at 30).

    In NumPy, after the head's matvec rather than inside its kernel: NumPy's tanh runs 16
    lanes at a time (0.14 ms over E2B's 262,144 logits), Numba's calls libm once per logit:
    inside the kernel the soft-cap took the head from 24.6 to 26.1 ms.
    """
    if cap > 0:
        cap = np.float32(cap)
        y /= cap
        np.tanh(y, out=y)
        y *= cap
    return y


def matvec_bf16(w: np.ndarray, x: np.ndarray, cap: float = 0.0) -> np.ndarray:
    """y = W x for bf16 W, optionally soft-capped.  # [out, in] u16, [in] f32 -> [out] f32

    Decode streams each weight from memory once, so one core cannot keep up (it reads about
    half the machine's bandwidth): large matrices are split into contiguous blocks of rows,
    two per thread (:func:`matvec_bf16_lines`). Small ones (under `MATVEC_SERIAL_BELOW` weights,
    e.g. PLE's 256 x 1536 gates) stay on one core. Rows whose length is not a multiple of 32
    take the plain loop, :func:`matvec_bf16_rows`.
    """
    out = np.empty(w.shape[0], np.float32)
    if w.shape[1] % 32 or not w.flags.c_contiguous:
        matvec_bf16_rows(w, x, out, 0, w.shape[0])
        return soft_cap(out, cap)
    x_even, x_odd = even_odd(x)
    if w.size < MATVEC_SERIAL_BELOW:
        matvec_bf16_lines(w, x_even, x_odd, out, 0, w.shape[0])
    else:
        matvec_bf16_parallel(w, x_even, x_odd, out, 2 * numba.get_num_threads())
    return soft_cap(out, cap)


@njit(cache=True)
def widen_bf16_rows(w: np.ndarray, out: np.ndarray) -> None:
    """Widen a block of bf16 rows into a float32 buffer.  # [rows, in] u16 -> [rows, in] f32

    On one core: for small tiles, waking a thread pool between BLAS calls costs more than it
    saves, and beside torch (tests, notebooks) our threads fight torch's for the cores (the
    demo model's perplexity ran 16x slower with every tile parallel).
    """
    bits = out.view(np.uint32)
    for r in range(w.shape[0]):
        for i in range(w.shape[1]):
            bits[r, i] = np.uint32(w[r, i]) << 16


@njit(parallel=True, cache=True)
def widen_bf16_rows_parallel(w: np.ndarray, out: np.ndarray) -> None:
    """widen_bf16_rows with the rows spread over the cores, for tiles of `SERIAL_BELOW` weights
    and more (E2B's are 4M: prefill 128 1.13 -> 1.06 s, once OpenBLAS's threads no longer spin
    between calls; see `gemma4_ref/__init__.py`)."""
    for r in prange(w.shape[0]):
        widen_bf16_rows(w[r : r + 1], out[r : r + 1])


@njit(parallel=True, cache=True)
def transpose(src: np.ndarray, dst: np.ndarray) -> None:
    """dst = src^T, in 32 x 32 blocks over the cores.  # [N, S] f32 -> [S, N] f32

    NumPy's own copy of a transposed [6144, 128] array takes 3.9 ms here, reading with a
    stride across the whole array; by blocks that stay in the L1 cache it takes 0.25 ms.
    """
    n, s = src.shape
    for b in prange((n + 31) // 32):
        n0, n1 = b * 32, min(n, b * 32 + 32)
        for s0 in range(0, s, 32):
            for j in range(s0, min(s, s0 + 32)):
                for i in range(n0, n1):  # contiguous writes; the reads stay in the block
                    dst[j, i] = src[i, j]


def matmul_tiles(
    x: np.ndarray, n_out: int, fill: Callable[[int, int, np.ndarray], None]
) -> np.ndarray:
    """y = x W^T, with W made float32 a tile of rows at a time by `fill(lo, hi, tile)`.

    # x [S, in] f32, W [out, in] -> [S, out] f32
    The prefill of bf16 and int4 layers: a tile of about 16 MB of float32 rows is widened or
    dequantized, then multiplied by BLAS. For a few tokens the product runs as W x^T against
    a contiguous copy of x^T, then transposes once: OpenBLAS's sgemm reads W's rows faster
    that way, 244 -> 306 GFLOPS on a 128-token [2730, 1536] tile. At 512 tokens `W x^T` was
    the slower (E2B prefill 3.30 against 3.21 s), so from 257 on the product is `x W^T`.
    Both transposes are `transpose`'s.
    """
    S, n_in = x.shape
    rows = max(1, min(n_out, _TILE_FLOATS // max(n_in, 1)))
    buf = np.empty((rows, n_in), np.float32)
    y = np.empty((S, n_out), np.float32)
    few = S <= WX_TOKENS
    if few:
        x_t, y_t = np.empty((n_in, S), np.float32), np.empty((n_out, S), np.float32)
        transpose(x, x_t)
    for lo in range(0, n_out, rows):
        hi = min(lo + rows, n_out)
        tile = buf[: hi - lo]
        fill(lo, hi, tile)
        if few:
            np.matmul(tile, x_t, out=y_t[lo:hi])
        else:
            y[:, lo:hi] = x @ tile.T
    if few:
        transpose(y_t, y)
    return y


def _matmul_tiled(x: np.ndarray, w: np.ndarray, dtype: str) -> np.ndarray:
    """Prefill: widen W tile by tile and let BLAS multiply.  # [S, in], [out, in] -> [S, out]"""

    def fill(lo: int, hi: int, tile: np.ndarray) -> None:
        if dtype == "bf16":
            widen = widen_bf16_rows if tile.size < SERIAL_BELOW else widen_bf16_rows_parallel
            widen(w[lo:hi], tile)
        else:
            tile[...] = w[lo:hi]

    return matmul_tiles(x, w.shape[0], fill)


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
        return soft_cap(y, cap)


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
