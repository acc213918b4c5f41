"""Dev bench for the int4 (w4a16, symmetric, group 32, bf16 scales) matrix-vector product.

The reference (unpack, dequantize, multiply in NumPy) first, then faster versions; each is
checked against the reference, then timed on E2B's layer shapes (llm.c `dev/` style).
Run: python bench/kernels/qmatvec_int4.py
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange
from timing import best_gbs, copies_for

from gemma4_ref import int4_lut
from gemma4_ref.int4 import (
    _block_dot,
    _round_bf16,
    dequantize_ref,
    pack_ref,
    qmatvec,
    qmatvec_int4_bf16,
    unpack_ref,
)
from gemma4_ref.linear import bf16_to_f32, bits_to_f32, even_odd

FM = {"reassoc", "contract"}


@njit(parallel=True, cache=True, fastmath=FM)
def v2_split_x(packed, scale, xe, xo, out, group):
    # the package kernel until 2026-11-30: x split into even and odd inputs, one sum per row,
    # integer nibbles (Numba widens them to 64-bit lanes: vcvtqq2ps in the assembly)
    half = group >> 1
    n_groups = packed.shape[1] // half
    for r in prange(packed.shape[0]):
        row = packed[r]
        acc = np.float32(0.0)
        for g in range(n_groups):
            s = bits_to_f32(np.uint32(scale[r, g]) << 16)
            b = row[g * half : (g + 1) * half]
            e = xe[g * half : (g + 1) * half]
            o = xo[g * half : (g + 1) * half]
            for k in range(half):
                v = np.int32(b[k])
                acc += _round_bf16(np.float32((v & 15) - 8) * s) * e[k]
                acc += _round_bf16(np.float32((v >> 4) - 8) * s) * o[k]
        out[r] = acc


@njit(parallel=True, cache=True, fastmath=FM)
def v6_one_sum(packed, scale, xe, xo, out, group):
    # group 32: the package kernel with one sum per row; each block's additions wait for the
    # previous block's (a chain of dependent adds), 1.2x slower on the Xeon
    n_groups = packed.shape[1] // 16
    for r in prange(packed.shape[0]):
        row = packed[r]
        acc = np.float32(0.0)
        for g in range(n_groups):
            acc += _block_dot(row, xe, xo, g, bits_to_f32(np.uint32(scale[r, g]) << 16))
        out[r] = acc


@njit(parallel=True, cache=True, fastmath=FM)
def v3_fma(packed, scale, xe, xo, out, group):
    # v2 with (n - 8) * s as one fused
    # n * s - 8 s (exact: the result fits in float32)
    half = group >> 1
    n_groups = packed.shape[1] // half
    for r in prange(packed.shape[0]):
        row = packed[r]
        acc = np.float32(0.0)
        for g in range(n_groups):
            s = bits_to_f32(np.uint32(scale[r, g]) << 16)
            m8 = np.float32(-8.0) * s
            b = row[g * half : (g + 1) * half]
            e = xe[g * half : (g + 1) * half]
            o = xo[g * half : (g + 1) * half]
            for k in range(half):
                v = np.int32(b[k])
                lo = _round_bf16(np.float32(v & 15) * s + m8)
                hi = _round_bf16(np.float32(v >> 4) * s + m8)
                acc += lo * e[k] + hi * o[k]
        out[r] = acc


@njit(parallel=True, cache=True, fastmath=FM)
def v4_vec_acc(packed, scale, xe, xo, out, group):
    # as v3, with a per-lane accumulator array over the group so LLVM keeps SIMD partial sums
    half = group >> 1
    n_groups = packed.shape[1] // half
    for r in prange(packed.shape[0]):
        row = packed[r]
        acc = np.zeros(half, np.float32)
        for g in range(n_groups):
            s = bits_to_f32(np.uint32(scale[r, g]) << 16)
            m8 = np.float32(-8.0) * s
            b = row[g * half : (g + 1) * half]
            e = xe[g * half : (g + 1) * half]
            o = xo[g * half : (g + 1) * half]
            for k in range(half):
                v = np.int32(b[k])
                lo = _round_bf16(np.float32(v & 15) * s + m8)
                hi = _round_bf16(np.float32(v >> 4) * s + m8)
                acc[k] += lo * e[k] + hi * o[k]
        out[r] = acc.sum()


@njit(parallel=True, cache=True, fastmath=FM)
def v5_unrounded(packed, scale, xe, xo, out, group):
    # NOT exact: sum q * x per group and scale once, skipping the bf16 rounding of each q * s
    # that compressed-tensors applies. It shows what the exactness costs; its result is
    # transformers' default fp32 decompression, about 1e-3 away from `dequantize=True`.
    half = group >> 1
    n_groups = packed.shape[1] // half
    for r in prange(packed.shape[0]):
        row = packed[r]
        acc = np.float32(0.0)
        for g in range(n_groups):
            s = bits_to_f32(np.uint32(scale[r, g]) << 16)
            b = row[g * half : (g + 1) * half]
            e = xe[g * half : (g + 1) * half]
            o = xo[g * half : (g + 1) * half]
            part = np.float32(0.0)
            for k in range(half):
                v = np.int32(b[k])
                part += np.float32((v & 15) - 8) * e[k] + np.float32((v >> 4) - 8) * o[k]
            acc += part * s
        out[r] = acc


def bench_shape(n_out: int, n_in: int, rng: np.random.Generator, group: int = 32) -> str:
    q = rng.integers(-8, 8, (n_out, n_in)).astype(np.int8)
    scale = rng.integers(0x3A00, 0x3C80, (n_out, n_in // group), dtype=np.uint16)
    packed = pack_ref(q, 4).view(np.uint8)
    assert (unpack_ref(packed.view(np.int32), 4, n_in) == q).all()
    nbytes = packed.nbytes + scale.nbytes
    ps = [packed.copy() for _ in range(copies_for(nbytes))]
    x = rng.standard_normal(n_in).astype(np.float32)
    xe, xo = even_odd(x)
    w = dequantize_ref(q, bf16_to_f32(scale), None, group, "bf16")
    ref = (w.astype(np.float64) @ x.astype(np.float64)).astype(np.float32)
    out = np.empty(n_out, np.float32)
    zero = np.zeros((0, 0), np.int8)
    variants = {
        "v1 general qmatvec": lambda p: qmatvec(p, scale, zero, x, out, 4, group, 16),
        "v2 split x": lambda p: v2_split_x(p, scale, xe, xo, out, group),
        "v3 fma": lambda p: v3_fma(p, scale, xe, xo, out, group),
        "v4 lanes": lambda p: v4_vec_acc(p, scale, xe, xo, out, group),
        "v5 unrounded (inexact)": lambda p: v5_unrounded(p, scale, xe, xo, out, group),
        "v6 one sum": lambda p: v6_one_sum(p, scale, xe, xo, out, group),
        "package portable (float nibbles, 4 sums)": lambda p: out.__setitem__(
            slice(None), qmatvec_int4_bf16(p, scale, x, group)
        ),
    }
    if int4_lut.AVAILABLE:  # the package kernel on AVX-512: one vpermps per 16 weights
        tables = int4_lut.group_tables(scale)  # once, at load, in the model
        variants["package AVX-512 (table permutes, 4 far rows)"] = lambda p: out.__setitem__(
            slice(None), int4_lut.qmatvec_lut(p, tables, x, group)
        )
    line = f"{n_out:>6} x {n_in:<6}"
    for name, fn in variants.items():
        fn(ps[0])
        err = np.abs(out - ref).max() / np.abs(ref).max()
        assert err < (1e-2 if "inexact" in name else 1e-5), (name, err)
        best, gbs = best_gbs(fn, ps, nbytes)
        line += f" | {name}: {best * 1e3:6.3f} ms {gbs:5.1f} GB/s"
    return line


def main() -> None:
    rng = np.random.default_rng(0)
    for n_out, n_in in [(12288, 1536), (1536, 12288), (6144, 1536), (2048, 1536), (256, 1536)]:
        print(bench_shape(n_out, n_in, rng), flush=True)


if __name__ == "__main__":
    main()
