"""Autograd, double backward, opcheck and torch.compile for the fastwn operators."""
import pytest
import torch
from conftest import DTYPES, assert_matches_reference, g_shape, reference, to_np

import fastwn

GRAD_CASES = [((5, 4), 0), ((5, 4), 1), ((3, 4, 5), 1), ((3, 4, 5), 2), ((3, 4, 5), None), ((2, 3, 4, 5), -3)]


def inputs(shape, dim, dtype=torch.float64, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype).to(device).requires_grad_()
    g = torch.randn(g_shape(shape, dim), generator=gen, dtype=torch.float64).to(dtype).to(device).requires_grad_()
    return v, g


@pytest.mark.parametrize("eps", [0.0, 0.5])
@pytest.mark.parametrize("shape,dim", GRAD_CASES, ids=str)
def test_gradcheck_and_gradgradcheck(isa, device, shape, dim, eps):
    v, g = inputs(shape, dim, device=device)
    fn = lambda v_, g_: fastwn.weight_norm(v_, g_, dim, eps=eps)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (v, g))
    assert torch.autograd.gradgradcheck(fn, (v, g))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,dim", GRAD_CASES, ids=str)
def test_autograd_runs_the_fused_backward(isa, device, shape, dim, dtype):
    v, g = inputs(shape, dim, dtype, device, seed=1)
    grad_w = torch.randn(shape, dtype=torch.float64).to(dtype).to(device)
    fastwn.weight_norm(v, g, dim).backward(grad_w)
    d = -1 if dim is None else dim
    _, norm = torch.ops.fastwn.weight_norm_fwd(v.detach(), g.detach(), d, 0.0)
    grad_v, grad_g = torch.ops.fastwn.weight_norm_bwd(grad_w, v.detach(), g.detach(), norm, d, 0.0)
    assert torch.equal(v.grad, grad_v) and torch.equal(g.grad, grad_g)


def test_vmap_matches_per_sample_calls():
    # The custom op runs under vmap through PyTorch's per-sample fallback.
    v = torch.randn(3, 5, 7, dtype=torch.float64)
    g = torch.randn(5, dtype=torch.float64)
    out = torch.func.vmap(lambda vi: fastwn.weight_norm(vi, g, 0))(v)
    assert torch.equal(out, torch.stack([fastwn.weight_norm(vi, g, 0) for vi in v]))


def test_functorch_grad_matches_backward(isa):
    # torch.func refuses C++ autograd Functions; fastwn's node is a plain autograd Node.
    v, g = inputs((5, 3), 0, seed=11)
    loss = lambda v_, g_: fastwn.weight_norm(v_, g_, 0).sin().sum()  # noqa: E731
    grad_v, grad_g = torch.func.grad(loss, argnums=(0, 1))(v.detach(), g.detach())
    loss(v, g).backward()
    # torch.func differentiates with a graph (create_graph), so the composite backward
    # runs: equal up to rounding, not bit for bit.
    torch.testing.assert_close(grad_v, v.grad, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grad_g, g.grad, rtol=1e-12, atol=1e-14)
    _, vjp = torch.func.vjp(lambda v_: fastwn.weight_norm(v_, g.detach(), 0), v.detach())
    (cotangent_v,) = vjp(torch.cos(fastwn.weight_norm(v.detach(), g.detach(), 0)))
    torch.testing.assert_close(cotangent_v, v.grad, rtol=1e-12, atol=1e-14)


def test_saved_tensors_are_freed_after_backward_unless_retained(isa):
    v, g = inputs((4, 3), 0, seed=12)
    w = fastwn.weight_norm(v, g, 0)
    assert w.grad_fn.name() == "WeightNormBackward"
    w.sum().backward(retain_graph=True)
    first = v.grad.clone()
    w.sum().backward()  # retained: runs again and accumulates
    assert torch.equal(v.grad, 2 * first)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        w.sum().backward()


def test_in_place_change_of_v_after_forward_is_caught(isa):
    v, g = inputs((4, 3), 0, seed=13)
    v2 = v * 1  # not a leaf, so it may be changed in place
    w = fastwn.weight_norm(v2, g, 0)
    v2.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        w.sum().backward()


def test_grad_of_g_alone_matches_full_backward(isa):
    # torch.autograd.grad with inputs=(g,) prunes v's edge: the node then computes grad_g
    # alone (the composite's reduction, so equal to the fused kernel's up to rounding).
    v, g = inputs((6, 5), 1, seed=14)
    grad_w = torch.randn(6, 5, dtype=torch.float64)
    (grad_g,) = torch.autograd.grad(fastwn.weight_norm(v, g, 1), (g,), grad_w)
    fastwn.weight_norm(v, g, 1).backward(grad_w)
    assert v.grad is not None
    torch.testing.assert_close(grad_g, g.grad, rtol=1e-12, atol=1e-14)


def test_double_backward_uses_a_differentiable_graph(isa):
    v, g = inputs((4, 6), 0)
    grad_v, grad_g = torch.autograd.grad(fastwn.weight_norm(v, g, 0).square().sum(), (v, g), create_graph=True)
    assert grad_v.requires_grad and grad_g.requires_grad
    # Scale invariance (paper §2): v . grad_v = 0, so its gradient is zero too.
    (hv,) = torch.autograd.grad((grad_v * v.detach()).sum(), v)
    assert torch.isfinite(hv).all()
    torch.testing.assert_close((grad_v * v).sum(1), torch.zeros(4, dtype=torch.float64), atol=1e-12, rtol=0)


@pytest.mark.parametrize("need_v,need_g", [(True, False), (False, True), (True, True)])
def test_needs_input_grad(isa, need_v, need_g):
    v, g = inputs((5, 7), 0, seed=2)
    v.requires_grad_(need_v)
    g.requires_grad_(need_g)
    fastwn.weight_norm(v, g, 0).sum().backward()
    assert (v.grad is not None) == need_v and (g.grad is not None) == need_g
    gv_ref, gg_ref = reference.backward(torch.ones(5, 7, dtype=torch.float64).numpy(), to_np(v), to_np(g), 0)
    if need_v:
        assert_matches_reference(v.grad, gv_ref, scale=1.0)
    if need_g:
        assert_matches_reference(g.grad, gg_ref, scale=1.0)


def test_norm_output_is_not_differentiable():
    v, g = inputs((3, 4), 0)
    w, norm = torch.ops.fastwn.weight_norm_fwd(v, g, 0, 0.0)
    assert w.requires_grad and not norm.requires_grad


OPCHECK_CASES = [((5, 4), 0), ((3, 4, 5), 1), ((3, 4, 5), 2), ((3, 4, 5), -1), ((4, 3, 2, 2), 0)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape,dim", OPCHECK_CASES, ids=str)
def test_opcheck(device, shape, dim, dtype):
    v, g = inputs(shape, dim, dtype, device, seed=3)
    torch.library.opcheck(torch.ops.fastwn.weight_norm_fwd.default, (v, g, dim, 0.0))
    torch.library.opcheck(torch.ops.fastwn.weight_norm_fwd.default, (v.detach(), g.detach(), dim, 0.25))
    w, norm = torch.ops.fastwn.weight_norm_fwd(v.detach(), g.detach(), dim, 0.0)
    torch.library.opcheck(torch.ops.fastwn.weight_norm_bwd.default, (torch.randn_like(w), v.detach(), g.detach(), norm, dim, 0.0))


def test_opcheck_channels_last(device):
    v = torch.randn(4, 3, 2, 2, device=device).contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(torch.ops.fastwn.weight_norm_fwd.default, (v, torch.randn(4, device=device), 0, 0.0))


@pytest.mark.parametrize("dim", [0, 1, None])
def test_compile_fullgraph_matches_eager(device, dim):
    torch._dynamo.reset()
    v, g = inputs((16, 8, 3), dim, torch.float32, device, seed=4)
    x = torch.randn(16, 24, device=device)

    def step(v_, g_):
        w = fastwn.weight_norm(v_, g_, dim)
        return (x @ w.reshape(16, 24).T).tanh().sum()

    compiled = torch.compile(step, fullgraph=True)
    loss_c = compiled(v, g)
    grads_c = torch.autograd.grad(loss_c, (v, g))
    loss_e = step(v, g)
    grads_e = torch.autograd.grad(loss_e, (v, g))
    torch.testing.assert_close(loss_c, loss_e)
    for a, b in zip(grads_c, grads_e):
        torch.testing.assert_close(a, b)


def test_compiled_autograd_of_a_compiled_step():
    # Compiled autograd sees AOTAutograd's backward of the compiled forward, never the eager
    # node (which has no compiled_args: README's known limits).
    torch._dynamo.reset()
    v, g = inputs((6, 4), 0, torch.float32, seed=15)
    v_ref, g_ref = v.detach().clone().requires_grad_(), g.detach().clone().requires_grad_()

    def step(v_, g_):
        fastwn.weight_norm(v_, g_, 0).sin().sum().backward()

    with torch._dynamo.config.patch(compiled_autograd=True):
        torch.compile(step)(v, g)
    step(v_ref, g_ref)
    torch.testing.assert_close(v.grad, v_ref.grad)
    torch.testing.assert_close(g.grad, g_ref.grad)


def test_compile_graph_calls_the_fused_ops():
    torch._dynamo.reset()
    seen = []

    def backend(gm, example_inputs):
        from torch._functorch.aot_autograd import aot_module_simplified, make_boxed_func

        def record(g, _):
            seen.extend(str(n.target) for n in g.graph.nodes if n.op == "call_function")
            return make_boxed_func(g.forward)

        return aot_module_simplified(gm, example_inputs, fw_compiler=record, bw_compiler=record)

    v, g = inputs((8, 5), 0, torch.float32, seed=5)
    loss = torch.compile(lambda a, b: fastwn.weight_norm(a, b, 0).sum(), backend=backend, fullgraph=True)(v, g)
    loss.backward()
    assert "fastwn.weight_norm_fwd.default" in seen
    assert "fastwn.weight_norm_bwd.default" in seen


def test_no_grad_and_inference_mode_fast_path():
    v, g = inputs((6, 5), 0, seed=6)
    expected = fastwn.weight_norm(v, g, 0).detach()
    with torch.no_grad():
        w = fastwn.weight_norm(v, g, 0)
    assert not w.requires_grad
    assert torch.equal(w, expected)
    with torch.inference_mode():
        assert torch.equal(fastwn.weight_norm(v, g, 0), expected)


def test_eager_calls_reach_dispatch_and_function_modes():
    # Eager calls go to the operator from C++ (fastwn.functional._eager): dispatch modes
    # must still see it, and __torch_function__ modes must be offered it.
    from torch.overrides import TorchFunctionMode
    from torch.utils._python_dispatch import TorchDispatchMode

    seen = []

    class Dispatch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(("dispatch", str(func)))
            return func(*args, **(kwargs or {}))

    class Function(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(("function", str(func)))
            return func(*args, **(kwargs or {}))

    v, g = inputs((4, 3), 0, seed=7)
    expected = fastwn.weight_norm(v, g, 0)
    for mode in (Dispatch(), Function()):
        with mode:
            assert torch.equal(fastwn.weight_norm(v, g, 0), expected)
    assert ("dispatch", "fastwn.weight_norm_fwd.default") in seen
    assert ("function", "fastwn.weight_norm_fwd.default") in seen


def test_forward_mode_ad_is_refused_not_dropped():
    # Inference calls skip the autograd node; a forward-mode tangent must not be lost there.
    import torch.autograd.forward_ad as fwAD

    v, g = inputs((4, 3), 0, seed=8)
    with fwAD.dual_level():
        dual = fwAD.make_dual(v.detach(), torch.ones_like(v))
        with pytest.raises(RuntimeError, match="jvp is not implemented"):
            fastwn.weight_norm(dual, g.detach(), 0)
