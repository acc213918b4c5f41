"""Packed integer weights: the compressed-tensors `pack-quantized` format (int4 and int8).

Google's QAT checkpoints `gemma-4-*-it-qat-w4a16-ct` store each linear weight W [out, in] as
(compressed-tensors 0.20, `compressors/pack_quantized`):

* `weight_packed`, int32 [out, in * bits / 32]: the integers q, densely packed along the input
  dimension, element i at bit i * bits of the row, **lowest bits first**, stored unsigned with an
  offset of 2^(bits-1) (+8 for int4, so q = -8..7 is stored as 0..15);
* `weight_scale` [out, in / group] in the checkpoint dtype (bf16): one step size per group of
  `group` consecutive inputs (`group` strategy) or per row (`channel` strategy);
* `weight_zero_point`, int32 [ceil(out * bits / 32), groups], only for asymmetric schemes: packed
  the same way but along the *output* dimension;
* `weight_shape`, int64 [2]: the unpacked shape.

The weight is `W[r, c] = (q[r, c] - z[r, g]) * s[r, g]` with g = c // group, computed in the
**scale's dtype** -- so with bf16 scales each weight is `bf16(q * s)`, a rounded product.
transformers gives exactly these weights when it decompresses at load time
(`CompressedTensorsConfig(dequantize=True)`, or a bf16 model); its default fp32 load keeps the
scales in fp32 and multiplies later, without the rounding, which moves logits by about 1e-3.

For int4 the bit layout reduces to bytes: byte k of a row holds element 2k in its low nibble
and element 2k + 1 in its high nibble (on a little-endian machine). Weights stay packed in memory
-- a quarter of bf16's bytes -- and the kernels unpack them on the fly, which is what makes int4
fast on a CPU: decode speed is set by bytes read per token.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from . import int4_lut
from .linear import (
    MATVEC_SERIAL_BELOW,
    SERIAL_BELOW,
    bf16_to_f32,
    bits_to_f32,
    even_odd,
    f32_to_bf16,
    f32_to_bits,
    matmul_tiles,
)

# --- scalar helpers for the kernels -----------------------------------------------------------


def _as_f32(value):
    """A stored scale as float32: bf16 bits (uint16) are widened, floats are cast."""
    raise NotImplementedError  # only used inside Numba kernels, through the overload below


@overload(_as_f32)
def _as_f32_impl(value):
    if value == types.uint16:
        return lambda value: bits_to_f32(np.uint32(value) << 16)
    return lambda value: np.float32(value)


@njit(inline="always")
def _round_mantissa(x, drop):
    """Round a float32 to `23 - drop` mantissa bits, to nearest even (bf16: drop 16, f16: 13)."""
    if drop == 0:
        return x
    bits = f32_to_bits(x)
    half = np.uint32((1 << (drop - 1)) - 1) + ((bits >> np.uint32(drop)) & np.uint32(1))
    bits = (bits + half) & ~np.uint32((1 << drop) - 1)
    return bits_to_f32(bits)


#: mantissa bits dropped when rounding a dequantized weight to the scale's dtype
ROUND_DROP = {"bf16": 16, "f16": 13, "f32": 0}


@dataclass(frozen=True)
class QuantArgs:
    """The weight quantization of one compressed-tensors config group."""

    num_bits: int
    group_size: int | None  # None: one scale per output row ("channel")
    symmetric: bool
    strategy: str


# --- the plain NumPy reference ----------------------------------------------------------------


def pack_ref(q: np.ndarray, num_bits: int, axis: int = 1) -> np.ndarray:
    """Pack signed integers densely into int32 words, lowest bits first, with the +2^(b-1) offset.

    # q int [rows, cols] -> int32 [rows, ceil(cols * b / 32)]   (axis=0 packs down the columns)
    """
    if axis == 0:
        return pack_ref(q.T, num_bits, 1).T.copy()
    rows, cols = q.shape
    per_word = 32 // num_bits
    words = -(-cols // per_word)
    u = np.zeros((rows, words * per_word), np.uint32)
    u[:, :cols] = (q.astype(np.int32) + (1 << (num_bits - 1))).astype(np.uint32)
    u = u.reshape(rows, words, per_word)
    shifts = (np.arange(per_word, dtype=np.uint32) * num_bits)[None, None, :]
    return np.bitwise_or.reduce(u << shifts, axis=2).view(np.int32)


def unpack_ref(packed: np.ndarray, num_bits: int, cols: int, axis: int = 1) -> np.ndarray:
    """Undo :func:`pack_ref`.  # int32 [rows, words] -> int8 [rows, cols]"""
    if axis == 0:
        return unpack_ref(packed.T, num_bits, cols, 1).T.copy()
    per_word = 32 // num_bits
    shifts = (np.arange(per_word, dtype=np.uint32) * num_bits)[None, None, :]
    u = (packed.view(np.uint32)[:, :, None] >> shifts) & np.uint32((1 << num_bits) - 1)
    u = u.reshape(packed.shape[0], -1)[:, :cols]
    return (u.astype(np.int32) - (1 << (num_bits - 1))).astype(np.int8)


def dequantize_ref(
    q: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, group: int, scale_dtype: str
) -> np.ndarray:
    """W = (q - z) * s, rounded to the scale's dtype as compressed-tensors computes it.

    # q int8 [out, in], scale f32 [out, G], zero int8 [out, G] | None -> f32 [out, in]
    """
    s = np.repeat(scale.astype(np.float32), group, axis=1)
    qz = q.astype(np.float32)
    if zero is not None:
        qz = qz - np.repeat(zero.astype(np.float32), group, axis=1)
    w = qz * s  # exact in float32: a small integer times a bf16 or f16 value
    if scale_dtype == "bf16":
        return bf16_to_f32(f32_to_bf16(w))
    if scale_dtype == "f16":
        return w.astype(np.float16).astype(np.float32)
    return w


def quantize_ref(
    w: np.ndarray, num_bits: int, group: int, symmetric: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Round-to-nearest quantization with compressed-tensors' min-max rule, per group.

    Following compressed-tensors 0.20 (`calculate_qparams`, `_quantize`): symmetric
    `s = max|w| / ((2^b - 1) / 2)` (7.5 for int4) and z = 0; asymmetric, with the range widened
    to include 0, `s = (max - min) / (2^b - 1)` and `z = round(q_min - min / s)` from the
    unrounded s. A zero scale becomes float32's epsilon. The scale is stored in bf16, and
    `q = clamp(round_half_even(w / s + z), q_min, q_max)` uses the stored scale.
    # w f32 [out, in] -> (q int8 [out, in], scale bf16 bits [out, G], zero int8 [out, G] | None)
    """
    out_f, in_f = w.shape
    q_min, q_max = -(1 << (num_bits - 1)), (1 << (num_bits - 1)) - 1
    g = w.reshape(out_f, in_f // group, group).astype(np.float32)
    if symmetric:
        scale = np.abs(g).max(axis=2) / np.float32((q_max - q_min) / 2)
        zero = None
    else:
        lo = np.minimum(g.min(axis=2), np.float32(0.0))
        hi = np.maximum(g.max(axis=2), np.float32(0.0))
        scale = (hi - lo) / np.float32(q_max - q_min)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(scale > 0, np.float32(q_min) - lo / scale, np.float32(q_min))
        zero = np.round(np.clip(z, q_min, q_max)).astype(np.int8)
    scale = np.where(scale == 0, np.finfo(np.float32).eps, scale).astype(np.float32)
    scale_bits = f32_to_bf16(scale)
    s = bf16_to_f32(scale_bits)
    shifted = g / s[:, :, None]
    if zero is not None:
        shifted = shifted + zero[:, :, None].astype(np.float32)
    q = np.clip(np.round(shifted), q_min, q_max).astype(np.int8)
    return q.reshape(out_f, in_f), scale_bits, zero


# --- Numba kernels ----------------------------------------------------------------------------


@njit(inline="always")
def _dequant_group(packed, scale, zero, r, g, group, bits, drop, has_zero, lut, out, out_off):
    # Dequantize group g of row r into out[out_off : out_off + group].
    s = _as_f32(scale[r, g])
    z = np.float32(zero[r, g]) if has_zero else np.float32(0.0)
    if bits == 4:
        # 16 possible values per group: build them once, then look nibbles up.
        for n in range(16):
            lut[n] = _round_mantissa((np.float32(n - 8) - z) * s, drop)
        base = (g * group) >> 1
        for k in range(group >> 1):
            byte = packed[r, base + k]
            out[out_off + 2 * k] = lut[byte & 15]
            out[out_off + 2 * k + 1] = lut[byte >> 4]
    else:
        base = g * group
        for k in range(group):
            q = np.float32(np.int32(packed[r, base + k]) - 128)
            out[out_off + k] = _round_mantissa((q - z) * s, drop)


@njit(inline="always")
def _round_bf16(x):
    bits = f32_to_bits(x)
    bits = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) & np.uint32(
        0xFFFF0000
    )
    return bits_to_f32(bits)


@njit(inline="always")
def _block_dot(row, x_even, x_odd, j, s):
    # 16 bytes of a row (32 weights sharing the scale s) dotted with their inputs, each weight
    # rounded to bf16(q * s) exactly as compressed-tensors dequantizes it.
    # row u8 [in/2], x_even/x_odd [in/2] -> scalar
    b = row[16 * j : 16 * j + 16]
    xe = x_even[16 * j : 16 * j + 16]
    xo = x_odd[16 * j : 16 * j + 16]
    part = np.float32(0.0)
    for k in range(16):  # a fixed trip count: LLVM turns it into whole SIMD vectors
        # The nibbles by float arithmetic, all exact: integer code here would be widened to
        # 64-bit lanes (Numba's integer promotion) and halve the SIMD width.
        v = np.float32(b[k])
        hi = np.floor(v * np.float32(0.0625))
        lo = v - np.float32(16.0) * hi
        part += _round_bf16((lo - np.float32(8.0)) * s) * xe[k]
        part += _round_bf16((hi - np.float32(8.0)) * s) * xo[k]
    return part


@njit(cache=True, fastmath={"reassoc", "contract"})
def _qmatvec_int4_bf16_rows(packed, scale, block_scale, x_even, x_odd, out, lo, hi):
    # Rows lo..hi of qmatvec for symmetric int4 with bf16 scales and group % 32 == 0, on one
    # core. packed u8 [out, in/2], scale u16 [out, G], block_scale [in/32] (the scale column
    # of each block of 32 weights), x_even/x_odd [in/2] (x[0::2], x[1::2]) -> out [out]
    # Byte k holds inputs 2k (low nibble) and 2k + 1 (high): with x split into its even and
    # odd entries both nibbles meet contiguous x. Four blocks go into four separate sums, so
    # one block's additions need not wait for the previous block's (a few % on the Xeon).
    n_blocks = block_scale.shape[0]
    four = n_blocks - n_blocks % 4
    for r in range(lo, hi):
        row = packed[r]
        s = scale[r]
        a0 = a1 = a2 = a3 = np.float32(0.0)
        for j in range(0, four, 4):
            a0 += _block_dot(row, x_even, x_odd, j, _as_f32(s[block_scale[j]]))
            a1 += _block_dot(row, x_even, x_odd, j + 1, _as_f32(s[block_scale[j + 1]]))
            a2 += _block_dot(row, x_even, x_odd, j + 2, _as_f32(s[block_scale[j + 2]]))
            a3 += _block_dot(row, x_even, x_odd, j + 3, _as_f32(s[block_scale[j + 3]]))
        for j in range(four, n_blocks):
            a0 += _block_dot(row, x_even, x_odd, j, _as_f32(s[block_scale[j]]))
        out[r] = (a0 + a1) + (a2 + a3)


@njit(parallel=True, cache=True)
def _qmatvec_int4_bf16_parallel(packed, scale, block_scale, x_even, x_odd, out, chunks):
    # The rows kernel over `chunks` contiguous blocks of rows, spread over the cores.
    n_out = packed.shape[0]
    step = -(-n_out // chunks)
    for c in prange(chunks):
        lo, hi = c * step, min(n_out, (c + 1) * step)
        _qmatvec_int4_bf16_rows(packed, scale, block_scale, x_even, x_odd, out, lo, hi)


def qmatvec_int4_bf16(packed: np.ndarray, scale: np.ndarray, x: np.ndarray, group: int):
    """out = W x for the published layout: symmetric int4, bf16 scales, groups of 32k.

    # packed u8 [out, in/2], scale u16 [out, in/group], x f32 [in] -> [out] f32
    Agrees with :func:`qmatvec` (bit-exact weights, the sum in another order). Only tiny
    matrices stay on one core: unlike bf16, this kernel is bound by arithmetic, not memory,
    so a second core pays off from far smaller matrices (2x on PLE's 256 x 1536 gates).
    """
    out = np.empty(packed.shape[0], np.float32)
    x_even, x_odd = even_odd(x)
    block_scale = int4_lut.block_scale_columns(packed.shape[1], group)
    if 2 * packed.size < MATVEC_SERIAL_BELOW:
        _qmatvec_int4_bf16_rows(packed, scale, block_scale, x_even, x_odd, out, 0, len(out))
    else:
        chunks = 2 * numba.get_num_threads()
        _qmatvec_int4_bf16_parallel(packed, scale, block_scale, x_even, x_odd, out, chunks)
    return out


# `reassoc` lets LLVM spread the dot product over SIMD lanes (the order of the sum changes, not
# the dequantized weights, which stay bit-exact; `tests/test_int4.py` checks both).
@njit(parallel=True, cache=True, fastmath={"reassoc", "contract"})
def qmatvec(packed, scale, zero, x, out, bits, group, drop):
    """out = W x with W packed.  # packed u8 [out, in*bits/8], x [in] -> out [out]

    One pass per row: each byte is split into its nibbles, offset, scaled and rounded to the
    scale's dtype with integer arithmetic that vectorises, then multiplied into the sum. Rows
    are split over the cores.
    """
    n_out = packed.shape[0]
    n_groups = x.shape[0] // group
    has_zero = zero.shape[0] == n_out
    for r in prange(n_out):
        row = packed[r]
        acc = np.float32(0.0)
        for g in range(n_groups):
            s = _as_f32(scale[r, g])
            z = np.float32(zero[r, g]) if has_zero else np.float32(0.0)
            xo = g * group
            if bits == 4:
                base = xo >> 1
                for k in range(group >> 1):
                    b = np.int32(row[base + k])
                    lo = _round_mantissa((np.float32((b & 15) - 8) - z) * s, drop)
                    hi = _round_mantissa((np.float32((b >> 4) - 8) - z) * s, drop)
                    acc += lo * x[xo + 2 * k] + hi * x[xo + 2 * k + 1]
            else:
                for k in range(group):
                    q = np.float32(np.int32(row[xo + k]) - 128)
                    acc += _round_mantissa((q - z) * s, drop) * x[xo + k]
        out[r] = acc


@njit(inline="always")
def _dequant_row(packed, scale, zero, r, bits, group, drop, lut, row):
    # Dequantize row r of W into row [in].
    has_zero = zero.shape[0] == packed.shape[0]
    for g in range(row.shape[0] // group):
        _dequant_group(packed, scale, zero, r, g, group, bits, drop, has_zero, lut, row, g * group)


@njit(cache=True)
def dequant_rows(packed, scale, zero, lo, hi, bits, group, drop, out):
    """Dequantize rows lo..hi into out [hi - lo, in], on one core (prefill hands it to BLAS)."""
    lut = np.empty(16, np.float32)
    for r in range(lo, hi):
        _dequant_row(packed, scale, zero, r, bits, group, drop, lut, out[r - lo])


@njit(parallel=True, cache=True)
def dequant_rows_parallel(packed, scale, zero, lo, hi, bits, group, drop, out):
    """dequant_rows with the rows spread over the cores."""
    for r in prange(lo, hi):
        lut = np.empty(16, np.float32)
        _dequant_row(packed, scale, zero, r, bits, group, drop, lut, out[r - lo])


_NO_ZERO = np.zeros((0, 0), np.int8)


class QuantizedLinear:
    """A linear layer whose weight stays packed; same interface as :class:`linear.Linear`."""

    def __init__(
        self,
        packed: np.ndarray,
        scale: np.ndarray,
        scale_dtype: str,
        zero: np.ndarray | None,
        args: QuantArgs,
        shape: tuple[int, int],
        name: str = "",
    ):
        out_f, in_f = shape
        self.name = name
        self.args = args
        self.out_features, self.in_features = out_f, in_f
        self.group = args.group_size or in_f
        # int32 words viewed as bytes: for int4, two elements a byte, low nibble first.
        self.packed = packed.view(np.uint8)
        self.scale = scale  # [out, G]: uint16 bf16 bits, or float32
        self.scale_dtype = scale_dtype
        self.drop = ROUND_DROP[scale_dtype]
        self.zero = _NO_ZERO if zero is None else zero  # int8 [out, G], unpacked at load
        # the published layout (symmetric int4, bf16 scales, groups of 32k) has its own fast
        # decode kernels: table lookups with AVX-512 (tables made at first use), float nibbles
        # elsewhere
        self.published = (
            args.num_bits == 4 and self.drop == 16 and self.zero.size == 0 and self.group % 32 == 0
        )
        self._tables: int4_lut.GroupTables | None = None

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes + self.scale.nbytes + self.zero.nbytes

    def dequantize(
        self, lo: int = 0, hi: int | None = None, out: np.ndarray | None = None
    ) -> np.ndarray:
        """Rows lo..hi of W as float32, into `out` if given.  # -> [hi - lo, in]"""
        hi = self.out_features if hi is None else hi
        if out is None:
            out = np.empty((hi - lo, self.in_features), np.float32)
        args = (self.packed, self.scale, self.zero, lo, hi, self.args.num_bits, self.group)
        # Small tiles on one core: between BLAS calls a thread pool of our own fights
        # OpenBLAS's threads (and torch's, when it is loaded) for the cores; the demo model's
        # perplexity beside torch ran 6x slower with every tile parallel.
        if out.size < SERIAL_BELOW:
            dequant_rows(*args, self.drop, out)
        else:
            dequant_rows_parallel(*args, self.drop, out)
        return out

    def _lookup_ready(self) -> bool:
        """Whether decode can take int4_lut's kernel (AVX-512, the published layout). Builds
        the tables at the first call."""
        if not (int4_lut.AVAILABLE and self.published):
            return False
        if self._tables is None:  # one pass over the scales, at the first token
            self._tables = int4_lut.group_tables(self.scale)
        return True

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """y = x W^T.  # [S, in] f32 -> [S, out] f32"""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.shape[0] == 1:
            if self._lookup_ready():
                return int4_lut.qmatvec_lut(self.packed, self._tables, x[0], self.group)[None, :]
            if self.published:
                return qmatvec_int4_bf16(self.packed, self.scale, x[0], self.group)[None, :]
            out = np.empty(self.out_features, np.float32)
            bits = self.args.num_bits
            qmatvec(self.packed, self.scale, self.zero, x[0], out, bits, self.group, self.drop)
            return out[None, :]
        return matmul_tiles(
            x, self.out_features, lambda lo, hi, tile: self.dequantize(lo, hi, tile)
        )
