"""Side-by-side benchmark: fastwn vs torch._weight_norm in one process.

Reports medians of repeated runs, the ratio torch/fastwn (> 1: fastwn is faster), the
effective bandwidth, and a copy of the same bytes (``clone``: read N, write N fresh) as
the ceiling. On the CPU each allocator mode runs in a child process, because torch reads
THP_MEM_ALLOC_ENABLE once at start-up: with it, large fresh outputs are backed by huge
pages. A third mode, "warm", tells glibc to keep freed memory (no fresh pages, no page
faults), which isolates kernel speed: under the default allocator whether an output
page-faults depends on which chunk happens to be at the top of the heap.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile

import torch

import fastwn

from ._timing import sample_times

# (shape, dim, label): the issue's shapes, plus last-axis cases for the column path, large
# and small.
CASES = [
    ((4096, 4096), 0, "linear 4096x4096"),
    ((4096, 4096), 1, "linear 4096x4096 dim=1"),
    ((11008, 4096), 0, "mlp 11008x4096"),
    ((1024, 1024), 0, "linear 1024x1024"),
    ((1024, 1024), 1, "linear 1024x1024 dim=1"),
    ((256, 256, 3, 3), 0, "conv2d 256x256x3x3"),
    ((512, 512, 3), 0, "conv1d 512x512x3"),
    ((768, 48, 128), 2, "wav2vec2 pos-conv dim=2"),
    ((64, 512, 512), 0, "64 rows of 262144"),
]
CUDA_EXTRA = [((1024, 1024, 1024), 0, "1024^3")]
COMPILED_BASELINE_SHAPES = {(4096, 4096), (64, 512, 512)}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Environment of each CPU allocator mode's child process.
ALLOCATORS = {
    "default": {},
    "thp": {"THP_MEM_ALLOC_ENABLE": "1"},
    "warm": {"MALLOC_MMAP_THRESHOLD_": str(2**40), "MALLOC_TRIM_THRESHOLD_": str(2**40),
             "MALLOC_TOP_PAD_": str(2**30)},
}


def _broadcast(v: torch.Tensor, dim: int) -> list[int]:
    return [v.size(dim) if i == dim else 1 for i in range(v.dim())]


def bench_case(shape, dim, dtype, device, reps, budget_s) -> dict:
    gen = torch.Generator(device).manual_seed(0)
    v = torch.randn(shape, generator=gen, device=device, dtype=dtype)
    g = torch.randn(shape[dim], generator=gen, device=device, dtype=dtype)
    grad_w = torch.randn(shape, generator=gen, device=device, dtype=dtype)
    g_torch = g.reshape(_broadcast(v, dim))
    vr, gr, gtr = v.clone().requires_grad_(), g.clone().requires_grad_(), g_torch.clone().requires_grad_()
    nbytes = v.numel() * v.element_size()

    def fwd_fastwn():
        return fastwn.weight_norm(v, g, dim)

    def fwd_torch():
        return torch._weight_norm(v, g_torch, dim)

    def fb_fastwn():
        fastwn.weight_norm(vr, gr, dim).backward(grad_w)
        vr.grad = gr.grad = None

    def fb_torch():
        torch._weight_norm(vr, gtr, dim).backward(grad_w)
        vr.grad = gtr.grad = None

    # Each library's function runs under two names in the same rounds (the A/A control):
    # a library's time over its time again is the smallest ratio the run can resolve.
    # Both are timed twice so that each follows itself as often as the other does: a call
    # after its own library's ran 1.5-4 % faster (Zen 4 VM, (1024, 1024) dim=1 fp32, 2
    # threads), and with torch alone timed twice 37 % of its calls followed a torch call
    # against 6 % of fastwn's. A library's time is the median over both names' calls.
    fwd_fns = {"copy": v.clone, "fwd_fastwn": fwd_fastwn, "fwd_fastwn_again": fwd_fastwn,
               "fwd_torch": fwd_torch, "fwd_torch_again": fwd_torch}
    fb_fns = {"fb_fastwn": fb_fastwn, "fb_fastwn_again": fb_fastwn, "fb_torch": fb_torch, "fb_torch_again": fb_torch}
    # A GPU user's other option, torch.compile of the formula (compile time excluded), on
    # the headline cases only: each shape and dtype compiles anew.
    if device == "cuda" and tuple(shape) in COMPILED_BASELINE_SHAPES:
        compiled = torch.compile(_composite_weight_norm, dynamic=False)

        def fb_compiled():
            compiled(vr, gtr, dim).backward(grad_w)
            vr.grad = gtr.grad = None

        fwd_fns["fwd_compiled"] = lambda: compiled(v, g_torch, dim)
        fb_fns["fb_compiled"] = fb_compiled
    samples = sample_times(fwd_fns, device, reps, budget_s)
    samples.update(sample_times(fb_fns, device, reps, budget_s))
    t = {name: statistics.median(ts) for name, ts in samples.items()}
    for name in ("fwd_fastwn", "fwd_torch", "fb_fastwn", "fb_torch"):
        t[name + "_both"] = statistics.median(samples[name] + samples[name + "_again"])
    fastwn_fwd, fastwn_fb = t["fwd_fastwn_both"], t["fb_fastwn_both"]
    return {
        "shape": list(shape), "dim": dim, "dtype": str(dtype).replace("torch.", ""), "device": device,
        "bytes": nbytes, "times_s": t,
        "fwd_speedup": t["fwd_torch_both"] / fastwn_fwd,
        "fb_speedup": t["fb_torch_both"] / fastwn_fb,
        "fwd_aa": t["fwd_torch"] / t["fwd_torch_again"],
        "fb_aa": t["fb_torch"] / t["fb_torch_again"],
        "fwd_aa_fastwn": t["fwd_fastwn"] / t["fwd_fastwn_again"],
        "fb_aa_fastwn": t["fb_fastwn"] / t["fb_fastwn_again"],
        # forward moves v in and w out; a clone moves the same bytes.
        "fwd_gbps": 2 * nbytes / fastwn_fwd / 1e9,
        "copy_gbps": 2 * nbytes / t["copy"] / 1e9,
        "fwd_pct_copy": 100 * t["copy"] / fastwn_fwd,
        # forward + backward: v in, w out, then grad_w and v in, grad_v out; against the
        # copy's bandwidth, the share of the ceiling those five passes reach.
        "fb_gbps": 5 * nbytes / fastwn_fb / 1e9,
        "fb_pct_copy": 100 * (5 * nbytes / fastwn_fb) / (2 * nbytes / t["copy"]),
    }


def _composite_weight_norm(v, g, dim):
    return v * (g / torch.norm_except_dim(v, 2, dim))


def _cases(device: str, quick: bool):
    cases = CASES + (CUDA_EXTRA if device == "cuda" else [])
    if quick:
        cases = [c for c in cases if c[0] in ((1024, 1024), (256, 256, 3, 3), (768, 48, 128))]
    return cases


def run_device(device: str, dtypes: list[str], reps: int, budget_s: float, quick: bool, progress=None) -> list[dict]:
    rows = []
    for shape, dim, label in _cases(device, quick):
        for name in dtypes:
            row = bench_case(shape, dim, DTYPES[name], device, reps, budget_s)
            row["case"] = label
            rows.append(row)
            if progress:
                progress(row)
    return rows


def machine_info() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "fastwn": fastwn.build_info(),
            "cpu_isa": fastwn.cpu_isa() if fastwn.HAS_EXTENSION else None,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def format_aa(row: dict, kind: str) -> str:
    """The A/A controls of a row, torch's then fastwn's: "1.01/0.98"."""
    return f"{row[kind + '_aa']:.2f}/{row[kind + '_aa_fastwn']:.2f}"


def format_table(rows: list[dict]) -> str:
    head = (f"{'case':<26}{'dtype':<10}{'alloc':<8}{'fwd ms':>9}{'torch':>9}{'x':>7}{'A/A t/f':>11}{'GB/s':>8}"
            f"{'copy':>8}{'%copy':>7}{'f+b ms':>9}{'torch':>9}{'x':>7}{'A/A t/f':>11}{'%copy':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        t = r["times_s"]
        lines.append(
            f"{r['case']:<26}{r['dtype']:<10}{r.get('alloc', r['device']):<8}{1e3 * t['fwd_fastwn_both']:>9.3f}"
            f"{1e3 * t['fwd_torch_both']:>9.3f}{r['fwd_speedup']:>7.2f}{format_aa(r, 'fwd'):>11}{r['fwd_gbps']:>8.1f}"
            f"{r['copy_gbps']:>8.1f}{r['fwd_pct_copy']:>7.0f}{1e3 * t['fb_fastwn_both']:>9.3f}"
            f"{1e3 * t['fb_torch_both']:>9.3f}{r['fb_speedup']:>7.2f}{format_aa(r, 'fb'):>11}{r['fb_pct_copy']:>7.0f}"
            + (f"  compiled: fwd x{t['fwd_compiled'] / t['fwd_fastwn_both']:.2f}, "
               f"f+b x{t['fb_compiled'] / t['fb_fastwn_both']:.2f}" if "fwd_compiled" in t else ""))
    return "\n".join(lines)


def _child(args) -> None:
    rows = run_device(args.device, args.dtypes, args.reps, args.budget, args.quick,
                      progress=lambda r: print(f"  {r['case']} {r['dtype']}: fwd x{r['fwd_speedup']:.2f} (A/A {format_aa(r, 'fwd')}), "
                                               f"f+b x{r['fb_speedup']:.2f} (A/A {format_aa(r, 'fb')})",
                                               file=sys.stderr, flush=True))
    for r in rows:
        r["alloc"] = args.alloc
    with open(args.child_out, "w") as f:
        json.dump(rows, f)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastwn bench", description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda", "all"], default="all",
                   help="all = cpu, plus cuda when a GPU and a CUDA build are present")
    p.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    p.add_argument("--reps", type=int, default=15, help="timed runs per measurement (median reported)")
    p.add_argument("--budget", type=float, default=4.0, help="seconds per group of measurements before stopping early (min 3 runs)")
    p.add_argument("--quick", action="store_true", help="small shapes only (a smoke run)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads in each benchmark process (default: torch's own choice)")
    p.add_argument("--json", metavar="PATH", help="write every number, with machine and versions, to PATH "
                   "(and a PNG plot beside it)")
    p.add_argument("--models", action="store_true", help="whole models (training step, inference) instead of the op")
    p.add_argument("--no-compile", action="store_true", help="with --models: skip torch.compile of torch's models")
    p.add_argument("--dora", action="store_true", help="DoRA: PEFT LoRA, PEFT DoRA and fastwn's DoRA (train step, "
                   "inference, peak memory) on Llama-shaped layers and a small Llama; needs peft")
    p.add_argument("--alloc", choices=list(ALLOCATORS), default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            p.error("--threads must be at least 1")
        torch.set_num_threads(args.threads)
    if args.child_out:
        _child(args)
        return 0
    if not fastwn.HAS_EXTENSION:
        print(f"fastwn's extension is not loaded ({fastwn.build_info()['error']}): nothing to benchmark", file=sys.stderr)
        return 1

    if args.models:
        return _main_models(args, argv)
    if args.dora:
        return _main_dora(args, argv)
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if "cuda" in devices and not (torch.cuda.is_available() and fastwn.build_info().get("cuda")):
        if args.device == "cuda":
            print("no CUDA device or no CUDA build of fastwn", file=sys.stderr)
            return 1
        devices.remove("cuda")

    rows = []
    for device in devices:
        allocs = list(ALLOCATORS) if device == "cpu" else ["default"]
        for alloc in allocs:
            print(f"[{device}, {alloc} allocator]", file=sys.stderr, flush=True)
            env = {k: v for k, v in os.environ.items() if not any(k in a for a in ALLOCATORS.values())}
            env.update(ALLOCATORS[alloc])
            with tempfile.NamedTemporaryFile(suffix=".json") as out:
                cmd = [sys.executable, "-m", "fastwn", "bench", "--device", device, "--alloc", alloc,
                       "--child-out", out.name, "--reps", str(args.reps), "--budget", str(args.budget),
                       "--dtypes", *args.dtypes] + (["--quick"] if args.quick else []) \
                    + (["--threads", str(args.threads)] if args.threads is not None else [])
                subprocess.run(cmd, env=env, check=True)
                rows += json.load(open(out.name))
    print(format_table(rows))
    _write(args, argv, rows, plot_ops)
    return 0


def _write(args, argv, rows, plot) -> None:
    if not args.json:
        return
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"machine": machine_info(), "command": " ".join(["python -m fastwn bench", *(argv or sys.argv[2:])]),
                   "rows": rows}, f, indent=1)
    png = os.path.splitext(args.json)[0] + ".png"
    plot(rows, png)
    print(f"wrote {args.json} and {png}", file=sys.stderr)


def _devices(args) -> list[str]:
    """The devices --device names, less CUDA where there is no GPU or no CUDA build."""
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if not torch.cuda.is_available() or not fastwn.build_info().get("cuda"):
        devices = [d for d in devices if d != "cuda"]
    return devices


def _main_models(args, argv) -> int:
    from . import bench_models

    rows = []
    for device in _devices(args):
        rows += bench_models.run(device, args.reps, not args.no_compile)
    print(bench_models.format_table(rows))
    _write(args, argv, rows, bench_models.plot)
    return 0


def _main_dora(args, argv) -> int:
    from . import bench_dora

    rows = []
    for device in _devices(args):
        print(f"[{device}]", file=sys.stderr, flush=True)
        result = bench_dora.run(device, min(args.reps, 7), args.quick,
                                progress=lambda line: print(line, file=sys.stderr, flush=True))
        rows.append({"device": device, **result})
        print(f"## {device}\n\n{bench_dora.format_table(result)}\n")
    _write(args, argv, rows, bench_dora.plot)
    return 0


def plot_ops(rows: list[dict], path: str) -> None:
    """Forward and forward+backward speed-up over torch per case, dtype and allocator mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys((r["device"], r.get("alloc", r["device"])) for r in rows))
    cases = list(dict.fromkeys(r["case"] for r in rows))
    dtypes = list(dict.fromkeys(r["dtype"] for r in rows))
    fig, axes = plt.subplots(len(groups), 2, figsize=(13, 3.2 * len(groups)), squeeze=False)
    width = 0.8 / len(dtypes)
    for gi, (device, alloc) in enumerate(groups):
        for ci, (key, title) in enumerate((("fwd_speedup", "forward"), ("fb_speedup", "forward+backward"))):
            ax = axes[gi][ci]
            for di, dt in enumerate(dtypes):
                ys = [next((r[key] for r in rows if r["case"] == c and r["dtype"] == dt and r["device"] == device
                            and r.get("alloc", device) == alloc), 0) for c in cases]
                ax.bar([j + di * width for j in range(len(cases))], ys, width, label=dt)
            ax.axhline(1.0, color="k", lw=0.8)
            ax.set_xticks([j + width * (len(dtypes) - 1) / 2 for j in range(len(cases))], cases, rotation=25,
                          ha="right", fontsize=7)
            ax.set(title=f"{device}, {alloc} allocator: {title} speed-up over torch", ylabel="x")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
