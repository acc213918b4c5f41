"""int4 decode by table lookup: 16 weights per AVX-512 permute, still bit-exact.

The published w4a16 layout (symmetric int4, groups of 32, bf16 scales; see :mod:`int4`) gives
every weight as `bf16(q * s)`, and q takes only 16 values, -8..7. So the 32 weights of a group
take at most 16 distinct values. Build those 16 floats once per group, in one 512-bit register,
and the AVX-512 instruction `vpermps` then picks 16 weights at a time, each by the 4-bit index it
is stored as: the nibble *is* the table index, since q + 8 is what the file stores. Per 32
weights that is one widening load of 16 bytes, one shift, two permutes and two FMAs, plus the
table's load and multiply: 8 vector operations, against about 9 per 16 weights when each
weight is scaled and rounded on its own (`int4._block_dot`).

**The table without rounding in the loop.** A normal bf16 scale is s = ±2^e * (1 + m/128),
m = 0..127. Multiplying by a power of two commutes with rounding (nothing here underflows:
every nonzero |q * s| >= |s|), so

    bf16(q * s) = ±2^e * bf16(q * (1 + m/128))

and the second factor comes from a fixed table `LUT_ROWS[m]` of 128 x 16 floats (8 KB, which
stays in the L1 cache). The group's table is one row of it times one power of two, both exact.
A zero scale comes out as zeros on its own (its "power of two" is ±0). A subnormal scale
(below 1.2e-38, never seen in a checkpoint) has no leading 1 and breaks the identity:
`scales_supported` finds those, and such layers keep the portable kernel.

Numba has no vector types and does not emit `vpermps` on its own, so the inner loop is written
in LLVM IR (:mod:`simd`), four far-apart rows at a time -- four read streams
(the hardware prefetcher follows each), and each x vector loaded once for four rows. Machines
without AVX-512 use `int4.qmatvec_int4_bf16`. `qmatvec_lut_ref` is the same algorithm in NumPy.
"""

from __future__ import annotations

import llvmlite.binding as llvm
import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import simd
from .linear import MATVEC_SERIAL_BELOW, even_odd


def _lut_rows() -> np.ndarray:
    """[128, 16] f32: row m is bf16(q * (1 + m/128)) for q = -8..7."""
    q = np.arange(-8, 8, dtype=np.float32)
    mantissa = 1 + np.arange(128, dtype=np.float32) / 128
    bits = (mantissa[:, None] * q[None, :]).view(np.uint32)  # exact: 8 x 4 significant bits
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000  # round to nearest even, to bf16
    return np.ascontiguousarray(bits.view(np.float32))


#: the scale-free tables, indexed by the scale's 7 mantissa bits
LUT_ROWS = _lut_rows()


def scales_supported(scale: np.ndarray) -> bool:
    """True when no bf16 scale is subnormal (exponent bits 0, mantissa not).  # scale u16 [...]"""
    return not np.any(((scale & 0x7F80) == 0) & ((scale & 0x7F) != 0))


def group_tables_ref(scale: np.ndarray) -> np.ndarray:
    """The 16 weight values of each group.  # scale u16 [out, G] (bf16 bits) -> [out, G, 16] f32

    Entry [r, g, n] is the weight stored as nibble n, i.e. bf16((n - 8) * s[r, g]).
    """
    if not scales_supported(scale):
        raise ValueError("a subnormal bf16 scale: the table identity needs zero or normal scales")
    power = ((scale.astype(np.uint32) & 0xFF80) << 16).view(np.float32)  # ±2^e: sign, exponent
    return LUT_ROWS[scale & 0x7F] * power[..., None]


def qmatvec_lut_ref(packed: np.ndarray, scale: np.ndarray, x: np.ndarray, group: int) -> np.ndarray:
    """out = W x by table lookup, in NumPy.

    # packed u8 [out, in/2], scale u16 [out, G], x f32 [in] -> [out] f32

    Byte k of a row holds input 2k in its low nibble and input 2k + 1 in its high nibble.
    """
    tables = group_tables_ref(scale)  # [out, G, 16]
    rows = np.arange(packed.shape[0])[:, None]
    group_of = np.arange(packed.shape[1] * 2) // group  # [in]
    nibbles = np.stack([packed & 15, packed >> 4], axis=-1).reshape(packed.shape[0], -1)
    weights = tables[rows, group_of[None, :], nibbles]  # [out, in]
    return (weights.astype(np.float64) @ x.astype(np.float64)).astype(np.float32)


def block_scale_columns(row_bytes: int, group: int) -> np.ndarray:
    """The scale column of each 16-byte block (32 weights) of a packed int4 row.  # -> [in/32]

    Looked up by the kernels: an integer division per block cost 1.2x (group % 32 == 0).
    """
    return np.arange(row_bytes // 16) // (group // 32)


def _host_has_avx512() -> bool:
    # Numba compiles for the host CPU unless NUMBA_CPU_NAME names a portable target.
    if numba.config.CPU_NAME not in (None, "host"):
        return False
    return bool(llvm.get_host_cpu_features().get("avx512f", False))


#: True where `qmatvec_lut` runs (an x86 CPU with AVX-512F)
AVAILABLE = _host_has_avx512()

# --- the kernel, in LLVM IR (helpers: simd.py) -------------------------------------------------


def _group_table(builder: ir.IRBuilder, lut, scale_bits):
    # The 16 weight values of a group with bf16 scale bits `scale_bits` (i16): a row of
    # LUT_ROWS times a power of two (see the module docstring). -> <16 x float>
    s = builder.zext(scale_bits, simd.I32)
    row = builder.and_(s, ir.Constant(simd.I32, 0x7F))  # the mantissa bits
    power = builder.and_(s, ir.Constant(simd.I32, 0xFF80))  # sign and exponent: ±2^e
    power = builder.bitcast(builder.shl(power, ir.Constant(simd.I32, 16)), ir.FloatType())
    offset = builder.mul(builder.zext(row, simd.I64), ir.Constant(simd.I64, 16))
    table = simd.load_vector(builder, lut, offset, simd.F32X16, 4)
    return builder.fmul(table, simd.splat(builder, power))


_WANT = [(types.uint8, 2), (types.uint16, 2), (types.int64, 1), (types.float32, 1)]
_WANT += [(types.float32, 1), (types.float32, 2), (types.float32, 1)]


def _rows_dot(n_rows: int):
    """An intrinsic: out[r0 + k * stride] = row (r0 + k * stride) of W dotted with x, k < n_rows."""

    @intrinsic
    def rows_dot(typingctx, packed, scale, block_scale, x_even, x_odd, lut, out, r0, stride):
        # packed u8 [out, in/2], scale u16 [out, G], block_scale i64 [in/32],
        # x_even/x_odd f32 [in/2], lut f32 [128, 16], out f32 [out]; all C-contiguous
        arrays = (packed, scale, block_scale, x_even, x_odd, lut, out)
        if not simd.c_arrays_match(arrays, _WANT):
            return None  # Numba reports the mismatch as a typing error
        sig = types.void(*arrays, types.int64, types.int64)

        def codegen(context, builder, signature, args):
            p, s, bs, xe, xo, lut_a, o = simd.array_structs(context, builder, signature, args, 7)
            r0, stride = args[7], args[8]
            n_in_half = cgutils.unpack_tuple(builder, p.shape)[1]
            n_groups = cgutils.unpack_tuple(builder, s.shape)[1]
            permute = cgutils.get_or_insert_function(
                builder.module,
                ir.FunctionType(simd.F32X16, [simd.F32X16, simd.I32X16]),
                "llvm.x86.avx512.permvar.sf.512",
            )
            index = simd.strided_rows(builder, r0, stride, n_rows)
            rows = [builder.gep(p.data, [builder.mul(r, n_in_half)]) for r in index]
            scales = [builder.gep(s.data, [builder.mul(r, n_groups)]) for r in index]
            # two sums a row (low and high nibbles), so consecutive FMAs do not wait
            sums = simd.zero_sums(builder, 2 * n_rows)
            n_blocks = builder.udiv(n_in_half, ir.Constant(simd.I64, 16))
            with cgutils.for_range(builder, n_blocks) as loop:
                j = loop.index
                at = builder.mul(j, ir.Constant(simd.I64, 16))  # 16 bytes = 32 weights a block
                column = builder.load(builder.gep(bs.data, [j]))
                x_lo = simd.load_vector(builder, xe.data, at, simd.F32X16, 4)  # inputs 2k
                x_hi = simd.load_vector(builder, xo.data, at, simd.F32X16, 4)  # inputs 2k + 1
                for k in range(n_rows):
                    simd.prefetch(builder, rows[k], at)
                    scale_bits = builder.load(builder.gep(scales[k], [column]))
                    table = _group_table(builder, lut_a.data, scale_bits)
                    # one byte a lane; vpermps reads only an index's low 4 bits, so the low
                    # nibble needs no mask, and the high one is a shift away
                    byte = simd.load_vector(builder, rows[k], at, simd.I8X16, 1)
                    byte = builder.zext(byte, simd.I32X16)
                    w_lo = builder.call(permute, [table, byte])
                    w_hi = builder.call(permute, [table, builder.lshr(byte, simd.splat_i32(4))])
                    simd.accumulate(builder, sums[2 * k], w_lo, x_lo)
                    simd.accumulate(builder, sums[2 * k + 1], w_hi, x_hi)
            simd.store_row_sums(builder, sums, o.data, index)
            return context.get_dummy_value()

        return sig, codegen

    return rows_dot


_dot_four_rows = _rows_dot(4)
_dot_one_row = _rows_dot(1)


@njit(cache=True)
def _lut_block(packed, scale, block_scale, x_even, x_odd, lut, out, lo, hi):
    # rows lo..hi on one core: rows r, r + q, r + 2q, r + 3q of the block together (four read
    # streams; q is a quarter of the block), then the last (hi - lo) % 4 rows one by one
    q = (hi - lo) // 4
    for r in range(lo, lo + q):
        _dot_four_rows(packed, scale, block_scale, x_even, x_odd, lut, out, r, q)
    for r in range(lo + 4 * q, hi):
        _dot_one_row(packed, scale, block_scale, x_even, x_odd, lut, out, r, 0)


@njit(parallel=True, cache=True)
def _lut_parallel(packed, scale, block_scale, x_even, x_odd, lut, out, chunks):
    # _lut_block over `chunks` contiguous blocks of rows, spread over the cores
    n_out = packed.shape[0]
    step = -(-n_out // chunks)
    for c in prange(chunks):
        lo, hi = c * step, min(n_out, (c + 1) * step)
        _lut_block(packed, scale, block_scale, x_even, x_odd, lut, out, lo, hi)


def qmatvec_lut(packed: np.ndarray, scale: np.ndarray, x: np.ndarray, group: int) -> np.ndarray:
    """out = W x for the published layout, with AVX-512 table lookups.

    # packed u8 [out, in/2], scale u16 [out, in/group], x f32 [in] -> [out] f32
    Needs `AVAILABLE`, group % 32 == 0 and `scales_supported(scale)`. Weights are bit-equal
    to `int4.dequantize_ref`'s bf16(q * s); only the order of the sum differs.
    """
    if not AVAILABLE:
        raise RuntimeError("qmatvec_lut needs AVX-512F; use int4.qmatvec_int4_bf16 on this CPU")
    n_in = x.shape[0]
    fits = group % 32 == 0 and packed.shape[1] * 2 == n_in
    if not fits or scale.shape != (packed.shape[0], n_in // group):
        raise ValueError(
            f"qmatvec_lut: packed {packed.shape}, scale {scale.shape}, x {x.shape} and group "
            f"{group} do not fit: want packed [out, in/2], scale [out, in/group], x [in], "
            "group a multiple of 32"
        )
    x = x.astype(np.float32, copy=False)
    x_even, x_odd = even_odd(x)
    block_scale = block_scale_columns(packed.shape[1], group)
    packed, scale = np.ascontiguousarray(packed), np.ascontiguousarray(scale)
    out = np.empty(packed.shape[0], np.float32)
    args = (packed, scale, block_scale, x_even, x_odd, LUT_ROWS, out)
    if 2 * packed.size < MATVEC_SERIAL_BELOW:
        _lut_block(*args, 0, packed.shape[0])
    else:
        _lut_parallel(*args, 2 * numba.get_num_threads())
    return out
