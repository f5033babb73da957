"""Model-level benchmark: training steps and inference of weight-normalised models.

fastwn (``fastwn.nn.convert``) against PyTorch's parametrization, and against
``torch.compile`` of PyTorch's model where it compiles (compilation is excluded from the
timings). Reports the median step time and the peak memory a step adds: on the CPU the
running sum of the profiler's allocation events, on a GPU torch.cuda's peak allocation.
"""
from __future__ import annotations

import copy
import sys

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm as torch_wn

import fastwn

from ._timing import median_times


class HifiGanGenerator(nn.Module):
    """HiFi-GAN V1's shape at reduced width: mel (80 bins) -> waveform, x256 upsampling."""

    def __init__(self, channels=128, ups=((8, 16), (8, 16), (4, 8)), dilations=(1, 3, 5)):
        super().__init__()
        self.pre = torch_wn(nn.Conv1d(80, channels, 7, padding=3))
        self.ups, self.res = nn.ModuleList(), nn.ModuleList()
        c = channels
        for stride, kernel in ups:
            self.ups.append(torch_wn(nn.ConvTranspose1d(c, c // 2, kernel, stride, padding=(kernel - stride) // 2)))
            c //= 2
            self.res.append(nn.ModuleList(torch_wn(nn.Conv1d(c, c, 3, dilation=d, padding=d)) for d in dilations))
        self.post = torch_wn(nn.Conv1d(c, 1, 7, padding=3))

    def forward(self, mel):
        x = self.pre(mel)
        for up, res in zip(self.ups, self.res):
            x = up(nn.functional.leaky_relu(x, 0.1))
            for conv in res:
                x = x + conv(nn.functional.leaky_relu(x, 0.1))
        return torch.tanh(self.post(nn.functional.leaky_relu(x)))


class Wav2Vec2PosConv(nn.Module):
    """wav2vec2-base's positional convolution: Conv1d(768, 768, 128, groups=16), weight norm dim=2."""

    def __init__(self, channels=768, kernel=128, groups=16):
        super().__init__()
        self.conv = torch_wn(nn.Conv1d(channels, channels, kernel, padding=kernel // 2, groups=groups), dim=2)
        self.norm = nn.LayerNorm(channels)

    def forward(self, x):
        y = self.conv(x.transpose(1, 2))[..., :-1]
        return self.norm(x + nn.functional.gelu(y).transpose(1, 2))


def wn_mlp(width=1024, hidden=4096, blocks=2):
    layers = []
    for _ in range(blocks):
        layers += [torch_wn(nn.Linear(width, hidden)), nn.GELU(), torch_wn(nn.Linear(hidden, width))]
    return nn.Sequential(*layers)


MODELS = {
    "hifigan-generator": (HifiGanGenerator, lambda dev: torch.randn(1, 80, 32, device=dev)),
    "wav2vec2-posconv": (Wav2Vec2PosConv, lambda dev: torch.randn(2, 100, 768, device=dev)),
    "wn-mlp": (wn_mlp, lambda dev: torch.randn(64, 1024, device=dev)),
}


def peak_mib(fn, device: str) -> float:
    """Peak memory fn allocates beyond what was allocated before it, in MiB: torch.cuda's
    peak on a GPU; on the CPU the running sum of the profiler's allocation and free
    events in time order (the CPU allocator keeps no statistics)."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    running = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        running += event.self_cpu_memory_usage
        peak = max(peak, running)
    return peak / 2**20


def _variants(name: str, device: str, with_compile: bool):
    make, _ = MODELS[name]
    torch.manual_seed(0)
    reference = make().to(device)
    ours = fastwn.nn.convert(copy.deepcopy(reference))
    variants = {"torch": reference, "fastwn": ours}
    if with_compile:
        variants["torch.compile(torch)"] = torch.compile(copy.deepcopy(reference))
    return variants


def _steps(model: nn.Module, x: torch.Tensor) -> dict:
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)

    def train():
        opt.zero_grad(set_to_none=True)
        model(x).square().mean().backward()
        opt.step()

    def infer():
        with torch.no_grad():
            model(x)

    return {"train": train, "infer": infer}


def bench_model(name: str, device: str, reps: int, with_compile: bool, progress) -> list[dict]:
    _, data = MODELS[name]
    x = data(device)
    rows, steps = {}, {}
    for impl, model in _variants(name, device, with_compile).items():
        rows[impl] = row = {"model": name, "impl": impl, "device": device}
        try:
            fns = _steps(model, x)
            for kind, fn in fns.items():
                for _ in range(2):
                    fn()  # warm-up (compilation, allocator)
                row[f"{kind}_peak_mib"] = peak_mib(fn, device)
            steps[impl] = fns
        except Exception as e:  # torch.compile of some models fails on some builds: say so, go on
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        progress(f"{name} {impl} " + ("failed" if "error" in row else "ready"))
    for kind in ("train", "infer"):
        # Round-robin, as for the op: the shared VM's speed drifts by tens of percent over
        # seconds, so implementations timed in phases of their own would see different machines.
        timed = median_times({impl: fns[kind] for impl, fns in steps.items()}, device, reps, budget_s=60.0)
        for impl, t in timed.items():
            rows[impl][f"{kind}_ms"] = 1e3 * t
        progress(f"{name} {kind} timed")
    return list(rows.values())


def format_table(rows: list[dict]) -> str:
    head = f"{'model':<20}{'impl':<22}{'train ms':>10}{'x torch':>9}{'peak MiB':>10}{'infer ms':>10}{'x torch':>9}{'peak MiB':>10}"
    lines = [head, "-" * len(head)]
    base = {(r["model"], k): r.get(f"{k}_ms") for r in rows if r["impl"] == "torch" for k in ("train", "infer")}
    for r in rows:
        if "error" in r:
            lines.append(f"{r['model']:<20}{r['impl']:<22}  {r['error'][:70]}")
            continue
        cells = ""
        for k in ("train", "infer"):
            cells += f"{r[k + '_ms']:>10.2f}{base[(r['model'], k)] / r[k + '_ms']:>9.2f}{r[k + '_peak_mib']:>10.1f}"
        lines.append(f"{r['model']:<20}{r['impl']:<22}" + cells)
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    width = 0.8 / len(impls)
    for ax, kind in zip(axes, ("train", "infer")):
        for i, impl in enumerate(impls):
            speedups = []
            for m in models:
                r = next((r for r in rows if r["model"] == m and r["impl"] == impl and f"{kind}_ms" in r), None)
                base = next(r for r in rows if r["model"] == m and r["impl"] == "torch")[f"{kind}_ms"]
                speedups.append(base / r[f"{kind}_ms"] if r else 0)
            ax.bar([j + i * width for j in range(len(models))], speedups, width, label=impl)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks([j + width * (len(impls) - 1) / 2 for j in range(len(models))], models, fontsize=8)
        ax.set(title=f"{kind}: speed-up over torch's weight_norm", ylabel="x (higher is faster)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def run(device: str, reps: int, with_compile: bool) -> list[dict]:
    total = len(MODELS) * ((3 if with_compile else 2) + 2)
    done = [0]

    def progress(what):
        done[0] += 1
        bar = "#" * (20 * done[0] // total)
        print(f"\r[{bar:<20}] {done[0]}/{total} {what:<50}", end="", file=sys.stderr, flush=True)

    rows = []
    for name in MODELS:
        rows += bench_model(name, device, reps, with_compile, progress)
    print(file=sys.stderr)
    return rows
