"""int4 decode by table lookup: 16 weights per AVX-512 permute, bit-exact.

The published w4a16 layout (symmetric int4, groups of 32, bf16 scales; see :mod:`int4`) gives
every weight as `bf16(q * s)`, and q takes only 16 values, -8..7. So the 32 weights of a group
take at most 16 distinct values: the group's *table*. With the table in one 512-bit register,
the AVX-512 instruction `vpermps` picks 16 weights at a time, each by the 4-bit index it is
stored as -- the nibble *is* the table index, since q + 8 is what the file stores.

**Tables built once, at load.** A matrix has thousands of groups but few distinct scales:
E2B's random-weight benchmark layers use 200-280 each, and 90% of their groups share about
110 of them, since scales cluster around max|w| / 7.5. So the tables are built once per
distinct scale (64 bytes each, 17 KB for an E2B layer: they stay in the 48 KB L1 cache), and
each group's bf16 scale is replaced by the number of its table, a uint16 like the scale it
replaces -- the same bytes to read per token. The tables are the dequantized weights
themselves, rounded as compressed-tensors rounds them, so any scale works, zero and
subnormal ones included.

Per 32 weights and row the loop then does one widening load of 16 bytes, one shift, two
permutes that read the table straight from the L1 cache, and two FMAs: 6 vector operations
on the two ports that execute 512-bit instructions. Scaling a shared table per group instead
(a table of scale-free rows times a power of two, this module until 2026-12-01) costs a
broadcast and a multiply more; that kernel read 20-22 GB/s of packed weights, this one
23-28 with 640 distinct scales a matrix (bench/kernels/qmatvec_int4.py) and 28-30 with
E2B's 270, on a memory bandwidth of about 33.

Numba has no vector types and does not emit `vpermps` on its own, so the inner loop is written
in LLVM IR (:mod:`simd`), four far-apart rows at a time -- four read streams (the hardware
prefetcher follows each), and each x vector loaded once for four rows. Machines without
AVX-512 use `int4.qmatvec_int4_bf16`. `qmatvec_lut_ref` is the same algorithm in NumPy.
"""

from __future__ import annotations

from dataclasses import dataclass

import llvmlite.binding as llvm
import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import simd
from .linear import MATVEC_SERIAL_BELOW, bf16_to_f32, even_odd, f32_to_bf16

#: the integers a nibble stands for: nibble n is q = n - 8
_Q = np.arange(-8, 8, dtype=np.float32)


@dataclass(frozen=True)
class GroupTables:
    """A matrix's scales as tables: `values[index[r, g], n]` is the weight nibble n stands for
    in group g of row r. Made by `group_tables`, so every index names a table."""

    index: np.ndarray  # u16 [out, G]
    values: np.ndarray  # f32 [T, 16], T distinct scales


def group_tables(scale: np.ndarray) -> GroupTables:
    """Each group's table number, and the tables: one per distinct scale.

    # scale u16 [out, G] (bf16 bits) -> index u16 [out, G], values f32 [n_distinct, 16]

    Table t holds the 16 weights a nibble can stand for under scale t: entry n is
    bf16((n - 8) * s), rounded to nearest even as `int4.dequantize_ref` rounds it.
    """
    seen = np.bincount(scale.ravel(), minlength=1 << 16)  # one pass, no sort
    distinct = np.flatnonzero(seen).astype(np.uint16)
    number = np.zeros(1 << 16, np.uint16)
    number[distinct] = np.arange(distinct.size, dtype=np.uint16)
    with np.errstate(over="ignore"):  # the largest bf16 scales overflow to inf, as in the file
        products = bf16_to_f32(distinct)[:, None] * _Q[None, :]  # exact in float32
    return GroupTables(number[scale], bf16_to_f32(f32_to_bf16(products)))


def qmatvec_lut_ref(packed: np.ndarray, tables: GroupTables, x: np.ndarray, group: int):
    """out = W x by table lookup, in NumPy.  # packed u8 [out, in/2], x f32 [in] -> [out] f32

    Byte k of a row holds input 2k in its low nibble and input 2k + 1 in its high nibble.
    """
    rows = np.arange(packed.shape[0])[:, None]
    group_of = np.arange(packed.shape[1] * 2) // group  # [in]
    nibbles = np.stack([packed & 15, packed >> 4], axis=-1).reshape(packed.shape[0], -1)
    weights = tables.values[tables.index[rows, group_of[None, :]], nibbles]  # [out, in]
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

_WANT = [(types.uint8, 2), (types.uint16, 2), (types.int64, 1), (types.float32, 1)]
_WANT += [(types.float32, 1), (types.float32, 2), (types.float32, 1)]

#: 16-byte blocks a row stream reads per prefetch (dev bench: 2 beat 1 and 4 by up to 10%)
_BLOCKS_PER_PREFETCH = 2


def _rows_dot(n_rows: int):
    """An intrinsic: out[r0 + k * stride] = row (r0 + k * stride) of W dotted with x, k < n_rows."""

    @intrinsic
    def rows_dot(typingctx, packed, index, block_scale, x_even, x_odd, tables, out, r0, stride):
        # packed u8 [out, in/2], index u16 [out, G], block_scale i64 [in/32],
        # x_even/x_odd f32 [in/2], tables f32 [T, 16], out f32 [out]; all C-contiguous
        arrays = (packed, index, block_scale, x_even, x_odd, tables, out)
        if not simd.c_arrays_match(arrays, _WANT):
            return None  # Numba reports the mismatch as a typing error
        sig = types.void(*arrays, types.int64, types.int64)

        def codegen(context, builder, signature, args):
            p, ix, bs, xe, xo, tb, o = simd.array_structs(context, builder, signature, args, 7)
            r0, stride = args[7], args[8]
            n_in_half = cgutils.unpack_tuple(builder, p.shape)[1]
            n_groups = cgutils.unpack_tuple(builder, ix.shape)[1]
            permute = cgutils.get_or_insert_function(
                builder.module,
                ir.FunctionType(simd.F32X16, [simd.F32X16, simd.I32X16]),
                "llvm.x86.avx512.permvar.sf.512",
            )
            rows_at = simd.strided_rows(builder, r0, stride, n_rows)
            rows = [builder.gep(p.data, [builder.mul(r, n_in_half)]) for r in rows_at]
            numbers = [builder.gep(ix.data, [builder.mul(r, n_groups)]) for r in rows_at]
            # two sums a row (low and high nibbles), so consecutive FMAs do not wait
            sums = simd.zero_sums(builder, 2 * n_rows)
            sixteen = ir.Constant(simd.I64, 16)

            def block(j):  # 16 bytes = 32 weights of each row, from byte 16 j
                at = builder.mul(j, sixteen)
                column = builder.load(builder.gep(bs.data, [j]))
                x_lo = simd.load_vector(builder, xe.data, at, simd.F32X16, 4)  # inputs 2k
                x_hi = simd.load_vector(builder, xo.data, at, simd.F32X16, 4)  # inputs 2k + 1
                for k in range(n_rows):
                    number = builder.zext(builder.load(builder.gep(numbers[k], [column])), simd.I64)
                    table = simd.load_vector(
                        builder, tb.data, builder.mul(number, sixteen), simd.F32X16, 4
                    )
                    # one byte a lane; vpermps reads only an index's low 4 bits, so the low
                    # nibble needs no mask, and the high one is a shift away
                    byte = simd.load_vector(builder, rows[k], at, simd.I8X16, 1)
                    byte = builder.zext(byte, simd.I32X16)
                    w_lo = builder.call(permute, [table, byte])
                    w_hi = builder.call(permute, [table, builder.lshr(byte, simd.splat_i32(4))])
                    simd.accumulate(builder, sums[2 * k], w_lo, x_lo)
                    simd.accumulate(builder, sums[2 * k + 1], w_hi, x_hi)

            per = ir.Constant(simd.I64, _BLOCKS_PER_PREFETCH)
            n_blocks = builder.udiv(n_in_half, sixteen)
            n_steps = builder.udiv(n_blocks, per)
            with cgutils.for_range(builder, n_steps) as loop:
                first = builder.mul(loop.index, per)
                for k in range(n_rows):
                    simd.prefetch(builder, rows[k], builder.mul(first, sixteen))
                for u in range(_BLOCKS_PER_PREFETCH):
                    block(builder.add(first, ir.Constant(simd.I64, u)))
            done = builder.mul(n_steps, per)
            with cgutils.for_range(builder, builder.sub(n_blocks, done)) as loop:  # the last few
                block(builder.add(done, loop.index))
            simd.store_row_sums(builder, sums, o.data, rows_at)
            return context.get_dummy_value()

        return sig, codegen

    return rows_dot


_dot_four_rows = _rows_dot(4)
_dot_one_row = _rows_dot(1)


@njit(cache=True)
def _lut_block(packed, index, block_scale, x_even, x_odd, tables, out, lo, hi):
    # rows lo..hi on one core: rows r, r + q, r + 2q, r + 3q of the block together (four read
    # streams; q is a quarter of the block), then the last (hi - lo) % 4 rows one by one
    q = (hi - lo) // 4
    for r in range(lo, lo + q):
        _dot_four_rows(packed, index, block_scale, x_even, x_odd, tables, out, r, q)
    for r in range(lo + 4 * q, hi):
        _dot_one_row(packed, index, block_scale, x_even, x_odd, tables, out, r, 0)


@njit(parallel=True, cache=True)
def _lut_parallel(packed, index, block_scale, x_even, x_odd, tables, out, chunks):
    # _lut_block over `chunks` contiguous blocks of rows, spread over the cores
    n_out = packed.shape[0]
    step = -(-n_out // chunks)
    for c in prange(chunks):
        lo, hi = c * step, min(n_out, (c + 1) * step)
        _lut_block(packed, index, block_scale, x_even, x_odd, tables, out, lo, hi)


def qmatvec_lut(packed: np.ndarray, tables: GroupTables, x: np.ndarray, group: int) -> np.ndarray:
    """out = W x for the published layout, with AVX-512 table lookups.

    # packed u8 [out, in/2], tables from `group_tables(scale [out, in/group])`, x f32 [in]
    # -> [out] f32
    Needs `AVAILABLE` and group % 32 == 0. Weights are bit-equal to `int4.dequantize_ref`'s
    bf16(q * s); only the order of the sum differs.
    """
    if not AVAILABLE:
        raise RuntimeError("qmatvec_lut needs AVX-512F; use int4.qmatvec_int4_bf16 on this CPU")
    n_in = x.shape[0]
    index = tables.index
    fits = group % 32 == 0 and packed.shape[1] * 2 == n_in
    if not fits or index.shape != (packed.shape[0], n_in // group):
        raise ValueError(
            f"qmatvec_lut: packed {packed.shape}, tables for scales {index.shape}, x {x.shape} "
            f"and group {group} do not fit: want packed [out, in/2], scales [out, in/group], "
            "x [in], group a multiple of 32"
        )
    x = x.astype(np.float32, copy=False)
    x_even, x_odd = even_odd(x)
    block_scale = block_scale_columns(packed.shape[1], group)
    packed = np.ascontiguousarray(packed)
    out = np.empty(packed.shape[0], np.float32)
    args = (packed, index, block_scale, x_even, x_odd, tables.values, out)
    if 2 * packed.size < MATVEC_SERIAL_BELOW:
        _lut_block(*args, 0, packed.shape[0])
    else:
        _lut_parallel(*args, 2 * numba.get_num_threads())
    return out
