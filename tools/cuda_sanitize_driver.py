"""Calls every CUDA kernel path of fastwn once, for compute-sanitizer (tools/gpu_proof.sh):
the rows schedule (a warp and a block per row), segments, columns, the finish-only path
of empty slices, aligned and offset views, every dtype, forward and backward; and
dora_norm's two modes (row-major and fan_in_fan_out weights, partial row tiles, rank 0,
empty). Small
shapes: the sanitizers slow kernels by orders of magnitude. --device cpu runs the same
calls on the CPU (the dry run of the proof script)."""
import argparse

import torch

import fastwn

# (shape, dim): a warp per row, a block per row, segments (long rows; a middle dim),
# columns (last dim), the whole tensor, empty slices.
CASES = [((40, 24), 0), ((140, 2000), 0), ((3, 9000), 0), ((5, 33, 40), 1), ((70, 5), 1), ((37, 11), None),
         ((4, 0), 0)]
# dora_norm (out, in, rank): partial row tiles, more rows than a column slice, rank 0, empty.
DORA_CASES = [(13, 300, 4), (37, 600, 16), (5, 7, 0), (0, 9, 2), (6, 0, 3)]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda")
    args = p.parse_args()
    assert fastwn.HAS_EXTENSION
    calls = 0
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        for shape, dim in CASES:
            for offset in (0, 1):  # an offset view: no 16-byte vector loads
                n = 1
                for s in shape:
                    n *= s
                base = torch.randn(n + offset, device=args.device, dtype=dtype)
                v = base[offset:].view(shape).requires_grad_()
                g = torch.randn(1 if dim is None else shape[dim], device=args.device, dtype=dtype, requires_grad=True)
                w = fastwn.weight_norm(v, g, dim, eps=1e-6 if offset else 0.0)
                w.backward(torch.randn_like(w))
                calls += 2
        for out, inp, rank in DORA_CASES:
            w = torch.randn(out, inp, device=args.device, dtype=dtype)
            a = torch.randn(rank, inp, device=args.device, dtype=dtype)
            b = torch.randn(out, rank, device=args.device, dtype=dtype)
            for weight in (w, w.t().contiguous().t()):  # rows, then columns (fan_in_fan_out)
                fastwn.dora_norm(weight, a, b, 0.5)
                calls += 1
    if args.device == "cuda":
        torch.cuda.synchronize()
    print(f"{calls} kernel calls ran")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
