"""Pieces for writing a kernel's inner loop in LLVM IR, for what Numba will not emit by itself.

Numba compiles Python loops through LLVM, and LLVM vectorises them well -- but a Python loop
cannot ask for two things the decode kernels need:

* **software prefetch** (`llvm.prefetch`): a matrix-vector product reads every weight once, so
  its speed is the memory's. The hardware prefetcher follows a stream only to the end of a
  4 KB page; asking for the line 1 KB ahead keeps reads in flight across page boundaries (the
  bf16 matvec went from 26 to 33 GB/s on a 805 MB matrix, bench/kernels/matvec_bf16.py);
* **a particular instruction**, such as AVX-512's `vpermps` (a 16-entry table lookup, see
  :mod:`int4_lut`).

These helpers build such loops with llvmlite's IR builder inside a `numba.extending.intrinsic`:
whole 16-lane float vectors, loads at an element offset, a fused multiply-add, a prefetch and a
horizontal sum. The kernels built from them live beside their plain versions (`linear.py`,
`int4_lut.py`), and tests hold them to those.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils

F32X16 = ir.VectorType(ir.FloatType(), 16)
I32X16 = ir.VectorType(ir.IntType(32), 16)
I8X16 = ir.VectorType(ir.IntType(8), 16)
I64, I32 = ir.IntType(64), ir.IntType(32)

#: bytes ahead of the current read that each row stream prefetches (dev bench: 1-2 KB best)
PREFETCH_BYTES = 1024


def splat_i32(value: int) -> ir.Constant:
    """A constant <16 x i32> with every lane `value`."""
    return ir.Constant(I32X16, [value] * 16)


def splat(builder: ir.IRBuilder, value) -> ir.Value:
    """A scalar float broadcast to all 16 lanes."""
    v = builder.insert_element(ir.Constant(F32X16, ir.Undefined), value, ir.Constant(I32, 0))
    return builder.shuffle_vector(v, v, ir.Constant(I32X16, [0] * 16))


def load_vector(builder: ir.IRBuilder, pointer, offset, vtype: ir.VectorType, align: int):
    """The vector at `pointer + offset` (offset counted in the pointer's elements)."""
    address = builder.bitcast(builder.gep(pointer, [offset]), vtype.as_pointer())
    return builder.load(address, align=align)


def fma(builder: ir.IRBuilder, a, b, c):
    """a * b + c, lane by lane, with one rounding (`vfmadd`)."""
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(F32X16, [F32X16] * 3), "llvm.fma.v16f32"
    )
    return builder.call(fn, [a, b, c])


def prefetch(builder: ir.IRBuilder, pointer, offset, ahead: int = PREFETCH_BYTES) -> None:
    """Ask for the cache line `ahead` bytes past `pointer + offset` (a hint: never faults)."""
    i8p = ir.IntType(8).as_pointer()
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [i8p, I32, I32, I32]), "llvm.prefetch.p0i8"
    )
    here = builder.bitcast(builder.gep(pointer, [offset]), i8p)
    address = builder.gep(here, [ir.Constant(I64, ahead)])
    # read (0), keep in all cache levels (3), data cache (1)
    builder.call(fn, [address, ir.Constant(I32, 0), ir.Constant(I32, 3), ir.Constant(I32, 1)])


def horizontal_sum(builder: ir.IRBuilder, v) -> ir.Value:
    """The sum of a <16 x float>'s lanes: halve the vector four times."""
    n = 16
    while n > 1:
        n //= 2
        pad = [0] * (16 - n)  # lanes past n are left over, unread
        low = builder.shuffle_vector(v, v, ir.Constant(I32X16, list(range(n)) + pad))
        high = builder.shuffle_vector(v, v, ir.Constant(I32X16, list(range(n, 2 * n)) + pad))
        v = builder.fadd(low, high)
    return builder.extract_element(v, ir.Constant(I32, 0))


def strided_rows(builder: ir.IRBuilder, r0, stride, n_rows: int) -> list:
    """The row numbers r0 + k * stride for k < n_rows (i64 values)."""
    return [builder.add(r0, builder.mul(stride, ir.Constant(I64, k))) for k in range(n_rows)]


def store_row_sums(builder: ir.IRBuilder, sums: list, out, rows: list) -> None:
    """out[rows[k]] = every lane of sums[2k] and sums[2k + 1] added up (each row's two sums)."""
    for k, r in enumerate(rows):
        total = builder.fadd(builder.load(sums[2 * k]), builder.load(sums[2 * k + 1]))
        builder.store(horizontal_sum(builder, total), builder.gep(out, [r]))


def zero_sums(builder: ir.IRBuilder, count: int) -> list:
    """`count` vector accumulators, each a stack slot that LLVM keeps in a register."""
    zero = ir.Constant(F32X16, [0.0] * 16)
    return [cgutils.alloca_once_value(builder, zero) for _ in range(count)]


def accumulate(builder: ir.IRBuilder, slot, a, b) -> None:
    """slot += a * b."""
    builder.store(fma(builder, a, b, builder.load(slot)), slot)


def c_arrays_match(arrays, want) -> bool:
    """Whether each Numba type in `arrays` is a C-contiguous array of (dtype, ndim) in `want`.

    Read-only (memory-mapped) arrays match too.
    """
    return all(
        isinstance(a, types.Array) and (a.dtype, a.ndim, a.layout) == (dtype, ndim, "C")
        for a, (dtype, ndim) in zip(arrays, want, strict=True)
    )


def array_structs(context, builder, signature, args, count: int) -> list:
    """The first `count` array arguments of an intrinsic, as structs with `.data`/`.shape`."""
    return [
        context.make_array(t)(context, builder, a)
        for t, a in zip(signature.args[:count], args[:count], strict=True)
    ]
