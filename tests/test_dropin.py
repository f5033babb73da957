"""What a user replacing PyTorch's weight norm with fastwn's relies on: saving converted
models, weights unchanged by wrapping, PyTorch's own helpers, RNN weights, PyTorch's
errors, and fake tensors that agree with the real kernels (torch.compile)."""
import io
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm as torch_weight_norm

import fastwn
from fastwn.nn import convert, fold, remove_weight_norm, weight_norm

from conftest import DTYPES, LOW_PRECISION

fwd = torch.ops.fastwn.weight_norm_fwd
bwd = torch.ops.fastwn.weight_norm_bwd


def legacy_weight_norm(module, name="weight", dim=0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.nn.utils.weight_norm(module, name, dim)


def roundtrip(model):
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


@pytest.mark.parametrize("wrap", [torch_weight_norm, legacy_weight_norm])
@pytest.mark.parametrize("then_fold", [False, True])
def test_converted_and_folded_models_save_whole(wrap, then_fold):
    torch.manual_seed(0)
    m = nn.Sequential(wrap(nn.Conv1d(4, 4, 3)), nn.ReLU(), wrap(nn.Conv1d(4, 2, 3), dim=None))
    x = torch.randn(2, 4, 9)
    expected = m(x)
    convert(m)
    if then_fold:
        fold(m)
    torch.testing.assert_close(roundtrip(m)(x), expected)


def test_fold_of_a_torch_model_saves_whole():
    m = nn.Sequential(torch_weight_norm(nn.Linear(3, 4)))
    fold(m)
    assert roundtrip(m)(torch.ones(1, 3)).shape == (1, 4)


# (layer, dim): first, last, middle, negative and whole-tensor norms, ConvTranspose.
WRAP_CASES = [(lambda: nn.Linear(37, 19), 0), (lambda: nn.Linear(37, 19), 1), (lambda: nn.Linear(37, 19), None),
              (lambda: nn.Linear(37, 19), -2), (lambda: nn.Conv2d(5, 7, 3), 1), (lambda: nn.Conv2d(5, 7, 3), 2),
              (lambda: nn.Conv1d(6, 8, 5), None), (lambda: nn.ConvTranspose1d(6, 4, 3), 0)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", range(len(WRAP_CASES)))
def test_wrapping_returns_the_weight_bit_for_bit(dtype, case):
    make, dim = WRAP_CASES[case]
    torch.manual_seed(case)
    layer = make().to(dtype)
    before = layer.weight.detach().clone()
    weight_norm(layer, dim=dim)
    assert torch.equal(layer.weight, before)
    layer.weight = before * 3  # setting w re-derives g and v: it comes back exactly too
    assert torch.equal(layer.weight, before * 3)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("shape,dim", [((64, 256), None), ((8, 16, 32), 1), ((6, 5, 4, 3), -2), ((64, 256), 0),
                                       ((64, 256), 1), ((8, 16, 32), 2)])
def test_half_dtypes_follow_torch(dtype, shape, dim):
    # PyTorch rounds the scale g/||v|| to the dtype on its composite path (whole tensor,
    # middle and negative dims): fastwn does the same and matches it bit for bit. On the
    # first and last dims fastwn divides by the norm rounded to the dtype (which is what
    # makes wrapping exact) where PyTorch uses the float32 norm: one rounding apart.
    torch.manual_seed(7)
    v = torch.randn(shape).to(dtype)
    d = -1 if dim is None else dim
    g = (torch.rand(1 if dim is None else v.size(dim)) + 0.5).to(dtype)
    bshape = [1] * v.dim() if dim is None else [v.size(dim) if i == dim % v.dim() else 1 for i in range(v.dim())]
    ours, theirs = fastwn.weight_norm(v, g, dim), torch._weight_norm(v, g.reshape(bshape), d)
    if d in (0, v.dim() - 1):  # at most one representable value apart (bit patterns of one sign)
        assert ((ours.view(torch.int16).int() - theirs.view(torch.int16).int()).abs() <= 1).all()
    else:
        assert torch.equal(ours, theirs)


def test_pytorch_helpers_on_fastwn_modules():
    torch.manual_seed(8)
    m = weight_norm(nn.Linear(4, 3))
    other = weight_norm(nn.Linear(4, 3))
    assert parametrize.is_parametrized(m) and parametrize.is_parametrized(m, "weight")
    assert not parametrize.is_parametrized(m, "bias")
    assert parametrize.type_before_parametrizations(m) is nn.Linear
    with parametrize.cached():
        assert m.weight is m.weight  # one w per forward, as PyTorch's cache gives
    assert m.weight is not m.weight
    with pytest.raises(ValueError, match="Cannot leave unparametrized"):  # PyTorch's answer for g and v
        parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
    w = m.weight.detach().clone()
    parametrize.remove_parametrizations(m, "weight")
    assert type(m) is nn.Linear and isinstance(m._parameters["weight"], nn.Parameter)
    assert torch.equal(m.weight, w) and not fastwn.nn.is_weight_normalized(m)
    assert fastwn.nn.is_weight_normalized(other) and other(torch.ones(1, 4)).shape == (1, 3)  # own class, untouched
    with pytest.raises(ValueError, match="does not have a parametrization"):
        parametrize.remove_parametrizations(m, "weight")


def test_pytorch_removal_of_one_of_two_weights():
    rnn = nn.GRU(3, 4)
    weight_norm(rnn, "weight_ih_l0")
    weight_norm(rnn, "weight_hh_l0")
    parametrize.remove_parametrizations(rnn, "weight_ih_l0")
    assert fastwn.nn.is_weight_normalized(rnn, "weight_hh_l0")
    assert not fastwn.nn.is_weight_normalized(rnn, "weight_ih_l0")
    assert rnn(torch.randn(2, 1, 3))[0].shape == (2, 1, 4)
    rnn2 = roundtrip(rnn)
    assert fastwn.nn.is_weight_normalized(rnn2, "weight_hh_l0")


@pytest.mark.parametrize("make", [lambda: nn.LSTM(5, 6, num_layers=2), lambda: nn.GRU(5, 6, bidirectional=True),
                                  lambda: nn.LSTM(5, 6, proj_size=3)])
def test_rnn_with_weight_norm_on_every_weight(make):
    torch.manual_seed(9)
    ours = make()
    theirs = make()
    theirs.load_state_dict(ours.state_dict())
    names = [n for n, _ in ours.named_parameters() if n.startswith("weight")]
    x = torch.randn(4, 2, 5)
    expected = ours(x)[0]
    for n in names:
        weight_norm(ours, n)
        torch_weight_norm(theirs, n)
    for n in names:  # the RNN's own weight list holds the current weights at once
        assert torch.equal(ours._flat_weights[ours._flat_weights_names.index(n)], getattr(ours, n))
    out = ours(x)[0]
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out, theirs(x)[0], rtol=1e-5, atol=1e-6)
    out.square().sum().backward()
    theirs(x)[0].square().sum().backward()
    for (k, p), (k2, q) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert k == k2
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=k)
    for n in names:
        remove_weight_norm(ours, n)
        idx = ours._flat_weights_names.index(n)
        assert ours._flat_weights[idx] is ours._parameters[n]
    torch.testing.assert_close(ours(x)[0], out, rtol=1e-6, atol=1e-6)


def test_errors_like_pytorch():
    m = weight_norm(nn.Linear(3, 3))
    with pytest.raises(RuntimeError, match="Cannot register two weight_norm hooks on the same parameter weight"):
        weight_norm(m)
    with pytest.raises(RuntimeError, match="Cannot register two weight_norm hooks"):
        weight_norm(torch_weight_norm(nn.Linear(2, 2)))
    for wrap in (torch_weight_norm, legacy_weight_norm):
        converted = convert(nn.Sequential(wrap(nn.Linear(3, 3))))
        with pytest.raises(RuntimeError, match="already weight-normalised") as info:
            legacy_weight_norm(converted[0])
        assert isinstance(info.value, KeyError)  # what PyTorch raised there, still catchable as such
        assert converted[0](torch.ones(1, 3)).shape == (1, 3)  # left as it was


# ---- the operators: fake and real agree; every argument checked ----

def views():
    base = torch.randn(12, 5)
    yield "sliced-transposed", base[::2].t(), 0
    yield "sliced-transposed-dim1", base[::2].t(), 1
    yield "transposed", torch.randn(7, 6).t(), 0
    yield "offset", torch.randn(50)[3:43].view(8, 5), 1
    yield "channels_last", torch.randn(4, 3, 5, 5).to(memory_format=torch.channels_last), 0
    yield "channels_last-sliced", torch.randn(4, 3, 5, 10).to(memory_format=torch.channels_last)[..., ::2], 1
    yield "expanded", torch.randn(1, 6).expand(4, 6), 0
    yield "whole", torch.randn(9, 4)[:, 1:], None


@pytest.mark.parametrize("name,v,dim", list(views()), ids=[c[0] for c in views()])
def test_fake_outputs_have_the_real_strides(name, v, dim):
    d = -1 if dim is None else dim
    g = torch.randn(1 if dim is None else v.size(dim))
    w, norm = fwd(v, g, d, 0.0)
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fw, fnorm = fwd(mode.from_tensor(v), mode.from_tensor(g), d, 0.0)
        gv, gg = bwd(mode.from_tensor(w), mode.from_tensor(v), mode.from_tensor(g), mode.from_tensor(norm), d, 0.0)
    real_gv, real_gg = bwd(w.clone(), v, g, norm, d, 0.0)
    assert fw.stride() == w.stride() and fnorm.stride() == norm.stride()
    assert gv.stride() == real_gv.stride() and gg.stride() == real_gg.stride()
    torch.library.opcheck(fwd, (v, g, d, 0.0))
    torch.library.opcheck(bwd, (torch.randn_like(w), v, g, norm, d, 0.0))


def test_compile_with_a_non_dense_permuted_weight():
    torch._dynamo.reset()
    v, g = torch.randn(12, 5)[::2].t(), torch.randn(5)
    f = torch.compile(lambda v, g: fastwn.weight_norm(v, g, 0) * 2 + 1, fullgraph=True)
    torch.testing.assert_close(f(v, g), fastwn.weight_norm(v, g, 0) * 2 + 1)


@pytest.mark.parametrize("which", ["grad_w", "norm", "g"])
def test_backward_checks_every_device(which):
    args = {"grad_w": torch.randn(3, 4), "v": torch.randn(3, 4), "g": torch.randn(3), "norm": torch.ones(3)}
    args[which] = args[which].to("meta")
    with pytest.raises(RuntimeError, match=f"{which} is on meta but v is on cpu"):
        bwd(args["grad_w"], args["v"], args["g"], args["norm"], 0, 0.0)


@pytest.mark.parametrize("call,exc,words", [
    (lambda: fwd(torch.randn(3, 4), torch.randn(3), 0, 1e39), ValueError, ["eps must fit in float32"]),
    (lambda: fwd(torch.randn(3, 4).bfloat16(), torch.randn(3).bfloat16(), 0, 1e39), ValueError, ["eps must fit"]),
    (lambda: fastwn.weight_norm(torch.randn(3, 4), torch.randn(3), 1.5), TypeError, ["dim must be an int or None"]),
    (lambda: fastwn.weight_norm(torch.randn(3, 4), torch.randn(3), "1"), TypeError, ["dim must be an int", "str"]),
    (lambda: fastwn.weight_norm(torch.randn(3, 4), torch.randn(3), True), TypeError, ["got bool"]),
    (lambda: fastwn.weight_norm(None, torch.randn(3)), TypeError, ["v must be a Tensor", "NoneType"]),
    (lambda: fastwn.weight_norm(torch.randn(3, 4), None), TypeError, ["g must be a Tensor"]),
    (lambda: weight_norm(nn.Linear(3, 3), dim=0.5), TypeError, ["dim must be an int"]),
])
def test_more_bad_arguments(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    for w in words:
        assert w in str(info.value)
    fwd(torch.randn(3, 4).double(), torch.randn(3).double(), 0, 1e39)  # float64 norms hold it


@pytest.mark.parametrize("call,exc,words", [
    (lambda t: fwd(t(3, 4), t(3), 0, -1.0), ValueError, ["eps must be finite and >= 0"]),
    (lambda t: fwd(t(3, 4), t(3), 0, float("nan")), ValueError, ["eps must be finite"]),
    (lambda t: fwd(t(3, 4), t(3), 0, 1e39), ValueError, ["eps must fit in float32"]),
    (lambda t: bwd(t(3, 4).double(), t(3, 4), t(3), t(3), 0, 0.0), TypeError, ["grad_w must have v's dtype"]),
    (lambda t: bwd(t(3, 4), t(3, 4), t(3), t(3).double(), 0, 0.0), TypeError, ["norm must be"]),
    (lambda t: bwd(t(3, 4), t(3, 4), t(3), t(2), 0, 0.0), ValueError, ["norm must have g's 3 elements"]),
    (lambda t: bwd(t(3, 5), t(3, 4), t(3), t(3), 0, 0.0), ValueError, ["grad_w must have v's shape"]),
])
def test_fake_path_checks_what_the_real_one_checks(call, exc, words):
    from torch._subclasses.fake_tensor import FakeTensorMode

    for mode in (None, FakeTensorMode()):
        with pytest.raises(exc) as info:
            if mode is None:
                call(torch.randn)
            else:
                with mode:
                    call(torch.randn)
        for w in words:
            assert w in str(info.value)
