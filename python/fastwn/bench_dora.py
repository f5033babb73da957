"""python -m fastwn bench --dora: PEFT LoRA, PEFT DoRA and fastwn's DoRA side by side.

Each case is one bias-free Linear (Llama's shapes) or a small random-config Llama with
an adapter on every linear layer; each method runs in a fresh subprocess of its own, so
that its peak memory is its own: peak RSS on the CPU (getrusage), max_memory_allocated on
CUDA. Reported per method: the training step (forward, backward, SGD step; median), the
inference forward (eval mode, no_grad; median), the peak, and the peak above what the
process held after building the model ("step overhead"). Also ``dora_norm`` on its own
against one read of W0 (``W0.sum()``), the bandwidth floor of any norm of W0.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from ._timing import median_times

METHODS = ("peft-lora", "peft-dora", "fastwn-dora")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# (out, in, r, dtype, tokens): Llama-7B's q/o (4096x4096), up/gate (11008x4096), down (4096x11008).
LAYER_CASES = [
    (4096, 4096, 16, "fp32", 256), (4096, 4096, 8, "fp32", 256), (4096, 4096, 64, "fp32", 256),
    (4096, 4096, 16, "bf16", 2048), (11008, 4096, 16, "bf16", 512), (4096, 11008, 16, "bf16", 256),
]
QUICK_CASES = [(512, 384, 8, "fp32", 64), (384, 512, 8, "bf16", 32)]
LLAMA = {"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 4, "vocab_size": 1000}
LLAMA_TOKENS = (4, 128)
NORM_CASES = [(4096, 4096, r, d) for d in ("fp32", "bf16") for r in (8, 16, 64)] + [(11008, 4096, 16, "bf16")]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak(device: str) -> None:
    """Forget the peak so far (building the model: PEFT's DoRA init forms B@A and W0 + s B@A)."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        with open("/proc/self/clear_refs", "w") as f:  # "5": reset the peak RSS (VmHWM) to the current RSS
            f.write("5")


def _peak_bytes(device: str) -> int:
    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    with open("/proc/self/status") as f:
        kib = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
    return int(kib) * 1024


def _build(case: dict, method: str, device: str):
    import fastwn.peft
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    dtype = DTYPES[case["dtype"]]
    if case["kind"] == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        model = LlamaForCausalLM(LlamaConfig(**LLAMA, torch_dtype=dtype)).to(device, dtype)
        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        x = torch.randint(0, LLAMA["vocab_size"], LLAMA_TOKENS, device=device)
    else:
        model = torch.nn.Sequential(torch.nn.Linear(case["in"], case["out"], bias=False, device=device, dtype=dtype))
        targets = ["0"]
        x = torch.randn(case["tokens"], case["in"], device=device, dtype=dtype)
    cfg = LoraConfig(r=case["r"], lora_alpha=2 * case["r"], target_modules=targets, use_dora=method != "peft-lora")
    model = get_peft_model(model, cfg, autocast_adapter_dtype=False)  # adapters in the model's dtype
    if method == "fastwn-dora":
        fastwn.peft.enable(model)
    return model, x


def _loss(model, x):
    out = model(x)
    y = out.logits if hasattr(out, "logits") else out
    return y.float().square().mean()


def _step_fn(model, x):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        _loss(model, x).backward()
        opt.step()
    return step


def _infer_fn(model, x):
    def infer():
        with torch.no_grad():
            model(x)
    return infer


def peak_of_method(case: dict, method: str, device: str) -> dict:
    """Peak memory of a training step, alone in this process (the parent runs each
    method in a child of its own)."""
    model, x = _build(case, method, device)
    step = _step_fn(model, x)
    step()  # optimizer state, allocator warm-up
    _reset_peak(device)
    held = torch.cuda.memory_allocated() if device == "cuda" else _rss_bytes()
    step()
    peak = _peak_bytes(device)
    return {"peak_bytes": peak, "step_overhead_bytes": peak - held}


def time_methods(case: dict, device: str, reps: int) -> dict:
    """Training step and inference time of every method, measured in shared rounds in one
    process, so that the machine's noise falls on all of them alike."""
    models = {m: _build(case, m, device) for m in METHODS}
    result = {}
    for key, make, mode in (("train_s", _step_fn, "train"), ("infer_s", _infer_fn, "eval")):
        fns = {}
        for m, (model, x) in models.items():
            getattr(model, mode)()
            fns[m] = make(model, x)
        # median_times runs each once first: the warm-up (and, in eval mode, the norm cache).
        for m, t in median_times(fns, device, reps, budget_s=60.0).items():
            result.setdefault(m, {})[key] = t
    return result


def norm_alone(device: str, reps: int) -> list[dict]:
    import fastwn

    rows = []
    for out, inp, r, d in NORM_CASES:
        dtype = DTYPES[d]
        w = torch.randn(out, inp, device=device, dtype=dtype)
        a, b = torch.randn(r, inp, device=device, dtype=dtype), torch.randn(out, r, device=device, dtype=dtype)
        fns = {"dora_norm": lambda: fastwn.dora_norm(w, a, b, 2.0), "read": lambda: w.sum(),
               "peft_norm": lambda: torch.linalg.norm(w + 2.0 * (b @ a), dim=1)}
        t = median_times(fns, device, reps, budget_s=60.0)
        rows.append({"out": out, "in": inp, "r": r, "dtype": d, "dora_norm_s": t["dora_norm"], "read_s": t["read"],
                     "peft_norm_s": t["peft_norm"], "pct_of_read": 100 * t["read"] / t["dora_norm"]})
        del w, a, b
    return rows


def _cases(quick: bool) -> list[dict]:
    layers = QUICK_CASES if quick else LAYER_CASES
    cases = [{"kind": "linear", "out": o, "in": i, "r": r, "dtype": d, "tokens": t} for o, i, r, d, t in layers]
    cases.append({"kind": "llama", "r": 8, "dtype": "fp32", "tokens": LLAMA_TOKENS[0] * LLAMA_TOKENS[1]})
    return cases


def case_name(c: dict) -> str:
    if c["kind"] == "llama":
        return f"Llama {LLAMA['num_hidden_layers']}x{LLAMA['hidden_size']} r{c['r']} {c['dtype']} {c['tokens']} tok"
    return f"{c['out']}x{c['in']} r{c['r']} {c['dtype']} {c['tokens']} tok"


def run(device: str, reps: int, quick: bool, progress=print) -> dict:
    rows = []
    for case in _cases(quick):
        row = {"case": case_name(case), **case, **time_methods(case, device, reps)}
        for method in METHODS:
            child = subprocess.run([sys.executable, "-m", "fastwn.bench_dora", json.dumps(case), method, device],
                                   capture_output=True, text=True, timeout=1800)
            if child.returncode != 0:
                raise RuntimeError(f"{method} on {row['case']} failed:\n{child.stderr[-3000:]}")
            row[method].update(json.loads(child.stdout.strip().splitlines()[-1]))
        lora = row["peft-lora"]
        for method in ("peft-dora", "fastwn-dora"):
            m = row[method]
            m["train_vs_lora"] = m["train_s"] / lora["train_s"]
            m["infer_vs_lora"] = m["infer_s"] / lora["infer_s"]
            m["extra_peak_bytes"] = m["peak_bytes"] - lora["peak_bytes"]
        progress(format_row(row))
        rows.append(row)
    return {"layers": rows, "dora_norm": norm_alone(device, reps)}


def _mb(b: float) -> str:
    return f"{b / 2**20:+.0f}"


def format_row(r: dict) -> str:
    lo, pd, fd = r["peft-lora"], r["peft-dora"], r["fastwn-dora"]
    return (f"{r['case']:<34} LoRA {lo['train_s'] * 1e3:7.1f} ms | PEFT DoRA {pd['train_vs_lora']:4.2f}x "
            f"{_mb(pd['extra_peak_bytes'])} MB | fastwn DoRA {fd['train_vs_lora']:4.2f}x {_mb(fd['extra_peak_bytes'])} MB"
            f" | infer {pd['infer_vs_lora']:4.2f}x / {fd['infer_vs_lora']:4.2f}x")


def format_table(result: dict) -> str:
    lines = ["| case | LoRA step | PEFT DoRA step | fastwn DoRA step | LoRA peak | PEFT DoRA peak | fastwn DoRA peak "
             "| LoRA infer | PEFT DoRA infer | fastwn DoRA infer |", "|---" * 10 + "|"]
    for r in result["layers"]:
        lo, pd, fd = r["peft-lora"], r["peft-dora"], r["fastwn-dora"]
        lines.append(
            f"| {r['case']} | {lo['train_s'] * 1e3:.1f} ms | {pd['train_s'] * 1e3:.1f} ms ({pd['train_vs_lora']:.2f}x) | "
            f"{fd['train_s'] * 1e3:.1f} ms ({fd['train_vs_lora']:.2f}x) | {lo['peak_bytes'] / 2**20:.0f} MB | "
            f"{pd['peak_bytes'] / 2**20:.0f} MB ({_mb(pd['extra_peak_bytes'])}) | "
            f"{fd['peak_bytes'] / 2**20:.0f} MB ({_mb(fd['extra_peak_bytes'])}) | {lo['infer_s'] * 1e3:.1f} ms | "
            f"{pd['infer_s'] * 1e3:.1f} ms ({pd['infer_vs_lora']:.2f}x) | "
            f"{fd['infer_s'] * 1e3:.1f} ms ({fd['infer_vs_lora']:.2f}x) |")
    lines += ["", "| W0 | r | dtype | dora_norm | one read of W0 | % of the read | PEFT's norm (materialised) |",
              "|---|---|---|---|---|---|---|"]
    for n in result["dora_norm"]:
        lines.append(f"| {n['out']}x{n['in']} | {n['r']} | {n['dtype']} | {n['dora_norm_s'] * 1e3:.2f} ms | "
                     f"{n['read_s'] * 1e3:.2f} ms | {n['pct_of_read']:.0f}% | {n['peft_norm_s'] * 1e3:.1f} ms |")
    return "\n".join(lines)


def plot(results: list[dict], path: str) -> None:
    """One row of panels per device: train step and inference time over PEFT LoRA's, and
    peak memory above it, for PEFT's DoRA and fastwn's (dashed: the targets)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    n = max(len(r["layers"]) for r in results)
    fig, axes = plt.subplots(len(results), 3, figsize=(17, (0.5 * n + 2.5) * len(results)), squeeze=False)
    panels = [("train_vs_lora", "training step / PEFT LoRA's", 1.15), ("infer_vs_lora", "inference / PEFT LoRA's", 1.05),
              ("extra_peak_bytes", "peak memory above PEFT LoRA's (MiB)", None)]
    for row_axes, result in zip(axes, results):
        rows = result["layers"]
        ys = list(range(len(rows)))
        for ax, (key, title, target) in zip(row_axes, panels):
            for k, (method, color) in enumerate((("peft-dora", "tab:red"), ("fastwn-dora", "tab:blue"))):
                vals = [r[method][key] / (1 if target else 2**20) for r in rows]
                ax.barh([y + 0.2 * (2 * k - 1) for y in ys], vals, height=0.4, color=color, label=method)
            if target:
                ax.axvline(1.0, color="k", lw=0.8)
                ax.axvline(target, color="k", ls="--", lw=0.8)
                ax.set_xscale("log")
                ax.set_xticks([0.5, 1, 2, 4], ["0.5x", "1x", "2x", "4x"])
                ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_title(f"{result['device']}: {title}")
            ax.set_yticks(ys, [r["case"] for r in rows] if ax is row_axes[0] else [""] * len(rows))
            ax.invert_yaxis()
        row_axes[0].legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _child_main(argv: list[str]) -> int:
    case, method, device = json.loads(argv[0]), argv[1], argv[2]
    print(json.dumps(peak_of_method(case, method, device)))
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
