"""python -m fastwn demo: the same small network on scikit-learn's digits, five ways.

Variants: plain parameterisation, weight norm (WN), WN + data-dependent init (paper §3),
WN + mean-only batch norm (§4), and batch norm for reference; each trained with plain
SGD at several learning rates from the same seeds. Prints training loss per epoch and
test accuracy, and saves a PNG of the loss curves and of ||v|| during training.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch
from torch import nn

import fastwn

VARIANTS = ["plain", "wn", "wn+init", "wn+mobn", "bn"]


def load_digits(seed: int = 0):
    """8x8 digit images bundled with scikit-learn (no download), standardised, split 80/20."""
    from sklearn.datasets import load_digits as sk_digits

    x, y = sk_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    n_train = int(0.8 * len(x))
    mean, std = x[:n_train].mean(0), x[:n_train].std(0).clamp_min(1e-3)
    x = (x - mean) / std
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])


def make_model(variant: str, hidden: int = 128) -> nn.Module:
    def linear(i, o):
        return fastwn.nn.Linear(i, o) if variant.startswith("wn") else nn.Linear(i, o)

    def norm(c):
        return {"wn+mobn": fastwn.nn.MeanOnlyBatchNorm1d, "bn": nn.BatchNorm1d}.get(variant, lambda c: nn.Identity())(c)

    return nn.Sequential(linear(64, hidden), norm(hidden), nn.ReLU(), linear(hidden, hidden), norm(hidden), nn.ReLU(),
                         linear(hidden, 10))


def v_norm(model: nn.Module) -> float:
    """Mean ||v|| over the rows of the first weight-normalised layer (nan without WN)."""
    first = model[0]
    if not fastwn.nn.is_weight_normalized(first):
        return float("nan")
    return first.parametrizations.weight.original1.detach().norm(dim=1).mean().item()


def train(variant: str, lr: float, data, epochs: int, seed: int, batch: int = 64) -> dict:
    (x_train, y_train), (x_test, y_test) = data
    torch.manual_seed(seed)
    model = make_model(variant)
    if variant == "wn+init":
        # Paper §3: v ~ N(0, 0.05^2), then g and b from one forward pass on a batch.
        for m in model:
            if fastwn.nn.is_weight_normalized(m):
                nn.init.normal_(m.parametrizations.weight.original1, 0.0, 0.05)
        fastwn.init.data_dependent_init_(model, x_train[:500])
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    order = torch.Generator().manual_seed(seed)
    losses, norms = [], [v_norm(model)]
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(x_train), generator=order)
        total = 0.0
        for i in range(0, len(x_train), batch):
            idx = perm[i:i + batch]
            loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        losses.append(total / len(x_train))
        norms.append(v_norm(model))
    model.eval()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    return {"variant": variant, "lr": lr, "loss": losses, "v_norm": norms, "test_accuracy": accuracy}


def run(lrs, epochs: int, seed: int = 0) -> list[dict]:
    data = load_digits(seed)
    return [train(v, lr, data, epochs, seed) for lr in lrs for v in VARIANTS]


def _loss(x: float) -> str:
    return f"{x:.4f}" if x < 1e3 else "diverged" if x == x else "nan"


def format_table(results: list[dict]) -> str:
    epochs = len(results[0]["loss"])
    shown = sorted({0, epochs // 4, epochs // 2, epochs - 1})
    head = f"{'lr':>6} {'variant':<9}" + "".join(f"{'ep' + str(e + 1):>9}" for e in shown) + f"{'test acc':>10}{'||v|| 0->end':>16}"
    lines = ["training loss per epoch (cross-entropy), test accuracy, mean ||v|| of layer 1", head, "-" * len(head)]
    for r in results:
        vn = r["v_norm"]
        norm = f"{vn[0]:.2f}->{vn[-1]:.2f}" if vn[0] == vn[0] else "-"
        lines.append(f"{r['lr']:>6} {r['variant']:<9}" + "".join(f"{_loss(r['loss'][e]):>9}" for e in shown)
                     + f"{100 * r['test_accuracy']:>9.1f}%{norm:>16}")
    return "\n".join(lines)


def plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lrs = sorted({r["lr"] for r in results})
    fig, axes = plt.subplots(2, len(lrs), figsize=(4.2 * len(lrs), 7), squeeze=False)
    for col, lr in enumerate(lrs):
        for r in (r for r in results if r["lr"] == lr):
            epochs = range(1, len(r["loss"]) + 1)
            color = f"C{VARIANTS.index(r['variant'])}"  # the same colour in both rows
            axes[0][col].plot(epochs, r["loss"], label=r["variant"], color=color)
            if r["v_norm"][0] == r["v_norm"][0]:
                axes[1][col].plot(range(len(r["v_norm"])), r["v_norm"], label=r["variant"], color=color)
        axes[0][col].set(title=f"SGD lr={lr}", xlabel="epoch", ylabel="training loss", yscale="log")
        axes[1][col].set(xlabel="epoch", ylabel="mean ||v|| (layer 1)")
        axes[0][col].legend(fontsize=8)
        axes[1][col].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastwn demo", description=__doc__.splitlines()[0])
    p.add_argument("--lrs", type=float, nargs="+", default=[0.03, 0.3, 3.0])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--png", default="fastwn-demo.png", help="where to save the curves (empty: no plot)")
    p.add_argument("--fast", action="store_true", help="2 epochs, one learning rate (a smoke run)")
    args = p.parse_args(argv)
    if args.fast:
        args.lrs, args.epochs = args.lrs[:1], 2
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    t0 = time.perf_counter()
    results = run(args.lrs, args.epochs, args.seed)
    print(format_table(results))
    print(f"({time.perf_counter() - t0:.0f} s, seed {args.seed}, torch {torch.__version__})")
    if args.png:
        plot(results, args.png)
        print(f"wrote {args.png}", file=sys.stderr)
    return 0
