"""Checks, numerically, each identity docs/weight-normalization.md states; asserts them.

Run: python docs/figures/identities.py   (float64 throughout; a few seconds)
"""
import torch

import fastwn

torch.manual_seed(0)
torch.set_default_dtype(torch.float64)
out, inp = 6, 10
v = torch.randn(out, inp, requires_grad=True)
g = torch.randn(out, requires_grad=True)
x = torch.randn(32, inp)
target = torch.randn(32, out)


def loss_fn(v_, g_):
    w = fastwn.weight_norm(v_, g_, dim=0)
    return ((x @ w.T).tanh() - target).square().mean()


def show(claim, value, ok):
    print(f"{claim:<62} {value}")
    assert ok, claim


def show_roundoff(claim, err, bound):
    # Prints the bound, not the error: float64 rounding residues differ from run to run
    # (the BLAS picks kernels by alignment and thread count), the bound does not.
    show(claim, f"< {bound:.0e}", float(err.detach()) < bound)


def fmt(xs):
    return "[" + ", ".join(f"{x:.9f}" for x in xs.tolist()) + "]"


# 1. ||w|| = |g|, whatever v's length: g is a learned length, not 1.
w = fastwn.weight_norm(v, g, dim=0)
show_roundoff("1. max | ||w_i|| - |g_i| |", (w.norm(dim=1) - g.abs()).abs().max(), 1e-15)
show("   ||w_i|| for v scaled by 1000", fmt(fastwn.weight_norm(1000 * v, g, 0).norm(dim=1)[:3]),
     torch.allclose(fastwn.weight_norm(1000 * v, g, 0).norm(dim=1), g.abs()))

# 2. The gradients (eq 3) and their projection form (eq 4).
loss = loss_fn(v, g)
grad_v, grad_g = torch.autograd.grad(loss, (v, g))
w = w.detach()
grad_w = torch.autograd.grad(((x @ w.requires_grad_().T).tanh() - target).square().mean(), w)[0]
vn = v.detach().norm(dim=1, keepdim=True)
show_roundoff("2. grad_g = grad_w . v/||v||: max error", (grad_g - (grad_w * v.detach() / vn).sum(1)).abs().max(), 1e-15)
M = torch.eye(inp) - torch.einsum("oi,oj->oij", w, w) / w.norm(dim=1)[:, None, None] ** 2
proj = (g.detach()[:, None] / vn) * torch.einsum("oij,oj->oi", M, grad_w)
show_roundoff("   grad_v = (g/||v||) M_w grad_w: max error", (grad_v - proj).abs().max(), 1e-15)

# 3. grad_v is orthogonal to v (scale invariance), so plain SGD only grows ||v||.
show_roundoff("3. max |v_i . grad_v_i|", (grad_v * v.detach()).sum(1).abs().max(), 1e-15)
lr = 0.5
v_new = v.detach() - lr * grad_v
lhs, rhs = v_new.norm(dim=1) ** 2, vn.squeeze(1) ** 2 + lr**2 * grad_v.norm(dim=1) ** 2
show_roundoff("   ||v'||^2 - (||v||^2 + lr^2 ||grad_v||^2): max", (lhs - rhs).abs().max(), 1e-13)
c = (lr * grad_v.norm(dim=1) / vn.squeeze(1))
show("   ||v'|| / ||v|| = sqrt(1 + c^2), c = ||dv||/||v||", fmt((v_new.norm(dim=1) / vn.squeeze(1))[:3]),
     torch.allclose(v_new.norm(dim=1) / vn.squeeze(1), (1 + c**2).sqrt()))

# 4. Scale invariance: L(g, a v) = L(g, v) and grad_v(a v) = grad_v(v) / a.
a = 7.0
va = (a * v.detach()).requires_grad_()
loss_a = loss_fn(va, g)
grad_va = torch.autograd.grad(loss_a, va)[0]
show_roundoff("4. |L(g, 7v) - L(g, v)|", (loss_a - loss).abs(), 1e-15)
show_roundoff("   max | grad_v(7v) * 7 - grad_v(v) |", (grad_va * a - grad_v).abs().max(), 1e-15)

# 5. Weight decay on v: the function is unchanged, ||v|| shrinks, the next step on the
#    direction is larger: decay acts on the effective learning rate, not on w.
decayed = (0.5 * v.detach()).requires_grad_()
step_before = (lr * torch.autograd.grad(loss_fn(v, g), v)[0]).norm() / v.detach().norm()
step_after = (lr * torch.autograd.grad(loss_fn(decayed, g), decayed)[0]).norm() / decayed.detach().norm()
show("5. L after halving v (weight decay) - L before", f"{(loss_fn(decayed, g) - loss).item():.1e}",
     (loss_fn(decayed, g) - loss).item() == 0.0)  # exact: scaling by 2^-k rounds nothing
show("   relative step on the direction: after / before halving", f"{(step_after / step_before).item():.3f}",
     abs((step_after / step_before).item() - 4.0) < 1e-9)

# 6. Batch norm and weight norm agree for one layer with whitened inputs: t = v.x/||v||
#    has mean 0 and standard deviation 1 (here over 200k samples).
xw = torch.randn(200_000, inp)
t = xw @ (v.detach() / vn).T
show("6. whitened inputs: max |mean t|, max |std t - 1|",
     f"{t.mean(0).abs().max():.3f}, {(t.std(0) - 1).abs().max():.3f}",
     t.mean(0).abs().max() < 0.02 and (t.std(0) - 1).abs().max() < 0.02)
print("all identities hold")
