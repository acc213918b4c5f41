"""Dev bench for the bf16 matrix-vector product (llm.c `dev/` style).

The reference first, then faster versions; each is checked against the reference, then timed
on the layer shapes of E2B. Run: python bench/kernels/matvec_bf16.py
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange
from timing import best_gbs, copies_for

from gemma4_ref import linear
from gemma4_ref.linear import (
    bf16_to_f32,
    bits_to_f32,
    even_odd,
    linear_ref,
    matvec_bf16,
    matvec_bf16_rows,
)

FM = {"reassoc", "contract"}


@njit(parallel=True, cache=True, fastmath=FM)
def v2_rows4(w, x, out):
    # four rows a task: each x[i] loaded once serves four rows
    n_out, n_in = w.shape
    for b in prange(n_out // 4):
        o = 4 * b
        r0, r1, r2, r3 = w[o], w[o + 1], w[o + 2], w[o + 3]
        a0 = a1 = a2 = a3 = np.float32(0.0)
        for i in range(n_in):
            xi = x[i]
            a0 += bits_to_f32(np.uint32(r0[i]) << 16) * xi
            a1 += bits_to_f32(np.uint32(r1[i]) << 16) * xi
            a2 += bits_to_f32(np.uint32(r2[i]) << 16) * xi
            a3 += bits_to_f32(np.uint32(r3[i]) << 16) * xi
        out[o], out[o + 1], out[o + 2], out[o + 3] = a0, a1, a2, a3
    for o in range(n_out - n_out % 4, n_out):
        acc = np.float32(0.0)
        for i in range(n_in):
            acc += bits_to_f32(np.uint32(w[o, i]) << 16) * x[i]
        out[o] = acc


@njit(parallel=True, cache=True, fastmath=FM)
def v1_prange_rows(w, x, out):
    # the first kernel: prange straight over the rows
    n_out, n_in = w.shape
    for o in prange(n_out):
        row = w[o]
        acc = np.float32(0.0)
        for i in range(n_in):
            acc += bits_to_f32(np.uint32(row[i]) << 16) * x[i]
        out[o] = acc


@njit(parallel=True, cache=True, fastmath=FM)
def v5_rows2_chunks(w, x, out, n_chunks):
    # contiguous chunks, two rows at a time: two read streams per core
    n_out, n_in = w.shape
    step = (n_out + n_chunks - 1) // n_chunks
    for c in prange(n_chunks):
        lo = c * step
        hi = min(lo + step, n_out)
        o = lo
        while o + 1 < hi:
            r0, r1 = w[o], w[o + 1]
            a0 = a1 = np.float32(0.0)
            for i in range(n_in):
                xi = x[i]
                a0 += bits_to_f32(np.uint32(r0[i]) << 16) * xi
                a1 += bits_to_f32(np.uint32(r1[i]) << 16) * xi
            out[o], out[o + 1] = a0, a1
            o += 2
        if o < hi:
            matvec_bf16_rows(w, x, out, o, hi)


@njit(parallel=True, cache=True, fastmath=FM)
def v6_far8(w, x, out, n_chunks):
    # the package's four far-apart rows at a time, taken to eight streams per block
    n_out, n_in = w.shape
    step = (n_out + n_chunks - 1) // n_chunks
    for c in prange(n_chunks):
        lo = c * step
        hi = min(lo + step, n_out)
        q = (hi - lo) // 8
        for o in range(lo, lo + q):
            r = (w[o], w[o + q], w[o + 2 * q], w[o + 3 * q])
            s = (w[o + 4 * q], w[o + 5 * q], w[o + 6 * q], w[o + 7 * q])
            a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = np.float32(0.0)
            for i in range(n_in):
                xi = x[i]
                a0 += bits_to_f32(np.uint32(r[0][i]) << 16) * xi
                a1 += bits_to_f32(np.uint32(r[1][i]) << 16) * xi
                a2 += bits_to_f32(np.uint32(r[2][i]) << 16) * xi
                a3 += bits_to_f32(np.uint32(r[3][i]) << 16) * xi
                a4 += bits_to_f32(np.uint32(s[0][i]) << 16) * xi
                a5 += bits_to_f32(np.uint32(s[1][i]) << 16) * xi
                a6 += bits_to_f32(np.uint32(s[2][i]) << 16) * xi
                a7 += bits_to_f32(np.uint32(s[3][i]) << 16) * xi
            out[o], out[o + q], out[o + 2 * q], out[o + 3 * q] = a0, a1, a2, a3
            out[o + 4 * q], out[o + 5 * q], out[o + 6 * q], out[o + 7 * q] = a4, a5, a6, a7
        matvec_bf16_rows(w, x, out, lo + 8 * q, hi)


@njit(parallel=True, cache=True, fastmath=FM)
def v7_far4(w, x, out, n_chunks):
    # the package kernel until 2026-12-01: four far-apart rows at a time, in Numba's own loop
    n_out, n_in = w.shape
    step = (n_out + n_chunks - 1) // n_chunks
    for c in prange(n_chunks):
        lo = c * step
        hi = min(lo + step, n_out)
        q = (hi - lo) // 4
        for o in range(lo, lo + q):
            r0, r1, r2, r3 = w[o], w[o + q], w[o + 2 * q], w[o + 3 * q]
            a0 = a1 = a2 = a3 = np.float32(0.0)
            for i in range(n_in):
                xi = x[i]
                a0 += bits_to_f32(np.uint32(r0[i]) << 16) * xi
                a1 += bits_to_f32(np.uint32(r1[i]) << 16) * xi
                a2 += bits_to_f32(np.uint32(r2[i]) << 16) * xi
                a3 += bits_to_f32(np.uint32(r3[i]) << 16) * xi
            out[o], out[o + q], out[o + 2 * q], out[o + 3 * q] = a0, a1, a2, a3
        matvec_bf16_rows(w, x, out, lo + 4 * q, hi)


_four_rows_no_prefetch = linear._bf16_rows_dot(4, ahead=0)


@njit(parallel=True, cache=True)
def v8_ir_no_prefetch(w, xe, xo, out, n_chunks):
    # the package's LLVM IR loop (64-byte lines, shift-and-mask widening) without prefetch
    n_out = w.shape[0]
    step = (n_out + n_chunks - 1) // n_chunks
    for c in prange(n_chunks):
        lo = c * step
        q = (min(lo + step, n_out) - lo) // 4
        for r in range(lo, lo + q):
            _four_rows_no_prefetch(w, xe, xo, out, r, q)


def bench_shape(n_out: int, n_in: int, rng: np.random.Generator) -> str:
    nbytes = n_out * n_in * 2
    ws = [
        rng.integers(0x3C00, 0x3F80, (n_out, n_in), dtype=np.uint16)
        for _ in range(copies_for(nbytes))
    ]
    x = rng.standard_normal(n_in).astype(np.float32)
    xe, xo = even_odd(x)
    ref = linear_ref(x[None], ws[0], "bf16")[0]
    out = np.empty(n_out, np.float32)
    variants = {
        "v1 prange rows": lambda w: v1_prange_rows(w, x, out),
        "v2 4 rows/task": lambda w: v2_rows4(w, x, out),
        "v3 serial": lambda w: matvec_bf16_rows(w, x, out, 0, n_out),
        "v5 2 rows, chunks": lambda w: v5_rows2_chunks(w, x, out, 4),
        "v6 8 far rows": lambda w: v6_far8(w, x, out, 4),
        "v7 4 far rows": lambda w: v7_far4(w, x, out, 4),
        "v8 IR lines, no prefetch": lambda w: v8_ir_no_prefetch(w, xe, xo, out, 4),
        "package (IR lines, 4 far rows, prefetch)": lambda w: out.__setitem__(
            slice(None), matvec_bf16(w, x)
        ),
    }
    if n_out % 8:  # v8 leaves the rows past a multiple of 4 a chunk to the package
        del variants["v8 IR lines, no prefetch"]
    # the yardstick: BLAS sgemv on float32 weights (twice the bytes)
    w32 = [bf16_to_f32(w) for w in ws[: max(1, len(ws) // 2)]]
    _, gbs = best_gbs(lambda w: w @ x, w32, 2 * nbytes)
    line = f"{n_out:>6} x {n_in:<6} | sgemv f32 {gbs:5.1f} GB/s"
    for name, fn in variants.items():
        fn(ws[0])
        err = np.abs(out - ref).max() / np.abs(ref).max()
        assert err < 1e-5, (name, err)
        best, gbs = best_gbs(fn, ws, nbytes)
        line += f" | {name}: {best * 1e3:6.3f} ms {gbs:5.1f} GB/s"
    return line


def main() -> None:
    rng = np.random.default_rng(0)
    # the first is E2B's tied head (262144 x 1536, 805 MB): larger than any cache
    shapes = [(262144, 1536), (12288, 1536), (1536, 12288), (6144, 1536), (2048, 1536)]
    shapes += [(256, 1536), (1536, 256)]
    for n_out, n_in in shapes:
        print(bench_shape(n_out, n_in, rng), flush=True)


if __name__ == "__main__":
    main()
