"""Data-dependent initialisation (paper §3) checked on a small CNN; asserts its claims.

Run: python docs/figures/ddi.py
"""
import torch
from torch import nn

import fastwn

torch.manual_seed(0)
model = nn.Sequential(fastwn.nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), fastwn.nn.Conv2d(16, 16, 3, padding=1),
                      nn.ReLU(), nn.Flatten(), fastwn.nn.Linear(16 * 8 * 8, 10))
layers = [m for m in model if fastwn.nn.is_weight_normalized(m)]


def stats(batch):
    """Per-channel mean and std of each weight-normalised layer's pre-activations."""
    outs = []
    hooks = [m.register_forward_hook(lambda m, i, o: outs.append(o.detach())) for m in layers]
    with torch.no_grad():
        model(batch)
    for h in hooks:
        h.remove()
    rows = []
    for o in outs:
        axes = [0] + list(range(2, o.dim()))
        rows.append((o.mean(axes), o.std(axes, unbiased=False)))
    return rows


def show(title, rows):
    print(title)
    for i, (m, s) in enumerate(rows):
        print(f"  layer {i}: mean in [{m.min():+.3f}, {m.max():+.3f}]   std in [{s.min():.3f}, {s.max():.3f}]")


def make_batch(n):
    return torch.randn(n, 3, 8, 8) * 2.0 + 0.7  # not zero-mean, not unit-variance


init_batch = make_batch(500)  # the Lasagne code initialised on 500 examples
show("before: PyTorch's default init, g = ||w||", stats(init_batch))
fastwn.init.data_dependent_init_(model, init_batch)
after = stats(init_batch)
show("after data_dependent_init_, on the init batch", after)
for m, s in after:
    assert m.abs().max() < 1e-4 and (s - 1).abs().max() < 1e-3
fresh = stats(make_batch(500))
show("after, on a fresh batch from the same distribution", fresh)
for m, s in fresh:
    assert m.abs().max() < 0.25 and (s - 1).abs().max() < 0.25
print("pre-activations are standardised on the init batch, and approximately on fresh batches")
