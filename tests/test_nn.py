"""fastwn.nn and fastwn.init on models shaped like real users' (HiFi-GAN, wav2vec2, MLP, CNN)."""
import copy
import io
import pickle
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm as torch_weight_norm

import fastwn
from fastwn.nn import convert, fold, remove_weight_norm, weight_norm


def legacy_weight_norm(module, name="weight", dim=0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the legacy API is deprecated, still widely used
        return torch.nn.utils.weight_norm(module, name, dim)


class HifiGanLike(nn.Module):
    """Conv1d + ConvTranspose1d upsampling stacks with residual blocks, as in HiFi-GAN."""

    def __init__(self, wn=torch_weight_norm, channels=16):
        super().__init__()
        self.pre = wn(nn.Conv1d(8, channels, 7, padding=3))
        self.ups = nn.ModuleList([wn(nn.ConvTranspose1d(channels, channels // 2, 4, 2, padding=1)),
                                  wn(nn.ConvTranspose1d(channels // 2, channels // 4, 4, 2, padding=1))])
        self.res = nn.ModuleList([wn(nn.Conv1d(channels // 2, channels // 2, 3, dilation=d, padding=d)) for d in (1, 3)])
        self.post = wn(nn.Conv1d(channels // 4, 1, 7, padding=3))

    def forward(self, x):
        x = self.pre(x)
        x = self.ups[0](nn.functional.leaky_relu(x, 0.1))
        for r in self.res:
            x = x + r(nn.functional.leaky_relu(x, 0.1))
        x = self.ups[1](nn.functional.leaky_relu(x, 0.1))
        return torch.tanh(self.post(x))


class Wav2Vec2PosConv(nn.Module):
    """wav2vec2's positional convolution: a grouped Conv1d weight-normalised over dim=2."""

    def __init__(self, wn=torch_weight_norm, channels=32, kernel=16, groups=4):
        super().__init__()
        self.conv = wn(nn.Conv1d(channels, channels, kernel, padding=kernel // 2, groups=groups), name="weight", dim=2)

    def forward(self, x):  # (batch, time, channels)
        y = self.conv(x.transpose(1, 2))[..., :-1]
        return x + nn.functional.gelu(y).transpose(1, 2)


def mlp(wn=torch_weight_norm):
    return nn.Sequential(wn(nn.Linear(10, 32)), nn.ReLU(), wn(nn.Linear(32, 32), dim=None), nn.ReLU(), wn(nn.Linear(32, 3)))


def cnn(wn=torch_weight_norm):
    return nn.Sequential(wn(nn.Conv2d(3, 8, 3, padding=1)), nn.ReLU(), wn(nn.Conv2d(8, 8, 3, stride=2)), nn.ReLU(),
                         nn.Flatten(), wn(nn.Linear(8 * 7 * 7, 5)))


MODELS = {
    "hifigan": (HifiGanLike, lambda: torch.randn(2, 8, 20)),
    "wav2vec2_posconv": (Wav2Vec2PosConv, lambda: torch.randn(2, 40, 32)),
    "mlp": (mlp, lambda: torch.randn(6, 10)),
    "cnn": (cnn, lambda: torch.randn(4, 3, 16, 16)),
}


def fastwn_wn(module, name="weight", dim=0):
    return weight_norm(module, name, dim)


def outputs_and_grads(model, x):
    model.zero_grad()
    out = model(x)
    out.square().sum().backward()
    return out.detach(), {k: p.grad for k, p in model.named_parameters() if p.requires_grad}


def assert_same_function(a, b, x, tol=1e-5):
    out_a, grads_a = outputs_and_grads(a, x)
    out_b, grads_b = outputs_and_grads(b, x)
    torch.testing.assert_close(out_a, out_b, rtol=tol, atol=tol)
    assert grads_a.keys() == grads_b.keys()
    for k in grads_a:
        torch.testing.assert_close(grads_a[k], grads_b[k], rtol=tol, atol=tol, msg=k)


@pytest.mark.parametrize("name", MODELS)
def test_fastwn_matches_pytorch_and_checkpoints_cross_load(name):
    make, data = MODELS[name]
    torch.manual_seed(0)
    reference, ours = make(torch_weight_norm), make(fastwn_wn)
    assert reference.state_dict().keys() == ours.state_dict().keys()
    ours.load_state_dict(reference.state_dict())  # torch -> fastwn
    x = data()
    assert_same_function(reference, ours, x)
    back = make(torch_weight_norm)
    back.load_state_dict(ours.state_dict())  # fastwn -> torch
    assert_same_function(back, ours, x)


@pytest.mark.parametrize("name", MODELS)
def test_legacy_checkpoint_loads_into_fastwn(name):
    make, data = MODELS[name]
    torch.manual_seed(1)
    legacy = make(legacy_weight_norm)
    assert any(k.endswith("weight_g") for k in legacy.state_dict())
    ours = make(fastwn_wn)
    ours.load_state_dict(legacy.state_dict())
    x = data()
    torch.testing.assert_close(ours(x), legacy(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("wrap", [torch_weight_norm, legacy_weight_norm, fastwn_wn])
@pytest.mark.parametrize("name", MODELS)
def test_convert_keeps_function_keys_and_parameters(name, wrap):
    make, data = MODELS[name]
    torch.manual_seed(2)
    model = make(wrap)
    x = data()
    if wrap is legacy_weight_norm:  # torch cannot deepcopy these after a forward
        expected = make(wrap)
        expected.load_state_dict(model.state_dict())
    else:  # convert must not break a copy that shares torch's generated classes
        expected = copy.deepcopy(model)
    keys, params = list(model.state_dict()), list(model.parameters())
    model.parameters().__next__().requires_grad_(False)
    frozen = [p.requires_grad for p in model.parameters()]
    convert(model)
    assert list(model.state_dict()) == keys
    assert [id(p) for p in model.parameters()] == [id(p) for p in params]  # an existing optimizer keeps working
    assert [p.requires_grad for p in model.parameters()] == frozen
    for m in model.modules():
        assert not torch.nn.utils.parametrize.is_parametrized(m) or fastwn.nn.is_weight_normalized(m)
        assert not m._forward_pre_hooks
    expected.parameters().__next__().requires_grad_(False)
    assert_same_function(expected, model, x)


@pytest.mark.parametrize("wrap", [torch_weight_norm, legacy_weight_norm, fastwn_wn])
@pytest.mark.parametrize("name", MODELS)
def test_fold_leaves_plain_layers_with_the_same_outputs(name, wrap):
    make, data = MODELS[name]
    torch.manual_seed(3)
    model = make(wrap)
    x = data()
    expected = model(x).detach()
    fold(model)
    assert not any(fastwn.nn.is_weight_normalized(m) or torch.nn.utils.parametrize.is_parametrized(m)
                   or m._forward_pre_hooks for m in model.modules())
    assert not any("original" in k or k.endswith(("_g", "_v")) for k in model.state_dict())
    torch.testing.assert_close(model(x), expected, rtol=1e-6, atol=1e-6)


def test_wrapping_does_not_change_outputs_and_norm_w_is_g():
    torch.manual_seed(4)
    layer = nn.Conv2d(3, 6, 3)
    x = torch.randn(2, 3, 8, 8)
    before = layer(x)
    weight_norm(layer)
    torch.testing.assert_close(layer(x), before, rtol=1e-6, atol=1e-6)
    g = layer.parametrizations.weight.original0
    torch.testing.assert_close(layer.weight.flatten(1).norm(dim=1), g.flatten().abs())


@pytest.mark.parametrize("cls,args,dim,g_numel", [
    (fastwn.nn.Linear, (5, 7), 0, 7), (fastwn.nn.Conv1d, (3, 4, 3), 0, 4), (fastwn.nn.Conv2d, (3, 4, 3), 1, 3),
    (fastwn.nn.Conv3d, (2, 4, 3), None, 1), (fastwn.nn.ConvTranspose1d, (3, 4, 3), 0, 3),
    (fastwn.nn.ConvTranspose2d, (3, 4, 3), 1, 4), (fastwn.nn.ConvTranspose3d, (2, 4, 3), 0, 2)])
def test_layers(cls, args, dim, g_numel):
    layer = cls(*args, dim=dim)
    assert isinstance(layer, cls.__mro__[1]) and isinstance(layer, cls)
    assert layer.parametrizations.weight.original0.numel() == g_numel  # ConvTranspose: dim 0 = input channels
    assert f"weight_norm_dim={-1 if dim is None else dim}" in repr(layer)
    base = cls.__mro__[1](*args)
    base.load_state_dict({"weight": layer.weight.detach(), "bias": layer.bias.detach()})
    x = torch.randn(2, args[0], *([6] * (layer.weight.dim() - 2))) if cls is not fastwn.nn.Linear else torch.randn(2, 5)
    torch.testing.assert_close(layer(x), base(x))


def test_setting_the_weight_rederives_g_and_v():
    layer = fastwn.nn.Linear(4, 3)
    new = torch.randn(3, 4)
    layer.weight = nn.Parameter(new)
    torch.testing.assert_close(layer.weight, new)
    assert "weight" not in layer._parameters


def test_remove_weight_norm_and_errors():
    layer = weight_norm(nn.Linear(4, 3))
    w = layer.weight.detach().clone()
    with pytest.raises(RuntimeError, match="already weight-normalised"):
        weight_norm(layer)
    remove_weight_norm(layer)
    assert type(layer) is nn.Linear and torch.equal(layer.weight, w)
    with pytest.raises(ValueError, match="not weight-normalised"):
        remove_weight_norm(layer)
    with pytest.raises(ValueError, match="no parameter named 'kernel'"):
        weight_norm(nn.Linear(2, 2), name="kernel")
    with pytest.raises(RuntimeError, match="already weight-normalised.*fastwn.nn.convert"):
        weight_norm(torch_weight_norm(nn.Linear(2, 2)))


def test_rnn_with_several_weight_norms():
    rnn = nn.GRU(4, 6)
    x = torch.randn(5, 2, 4)
    expected = rnn(x)[0]
    weight_norm(rnn, "weight_ih_l0")
    weight_norm(rnn, "weight_hh_l0")
    torch.testing.assert_close(rnn(x)[0], expected, rtol=1e-5, atol=1e-5)
    remove_weight_norm(rnn, "weight_ih_l0")
    assert fastwn.nn.is_weight_normalized(rnn, "weight_hh_l0") and not fastwn.nn.is_weight_normalized(rnn, "weight_ih_l0")
    torch.testing.assert_close(pickle.loads(pickle.dumps(rnn))(x)[0], rnn(x)[0])


@pytest.mark.parametrize("name", MODELS)
def test_deepcopy_pickle_and_torch_save_of_whole_modules(name):
    make, data = MODELS[name]
    model = make(fastwn_wn)
    x = data()
    expected = model(x)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model)), torch.load(buf, weights_only=False)):
        torch.testing.assert_close(clone(x), expected)
        assert all(p.data_ptr() != q.data_ptr() for p, q in zip(clone.parameters(), model.parameters()))
        clone(x).sum().backward()  # still trainable


def test_mean_only_batch_norm():
    torch.manual_seed(5)
    bn = fastwn.nn.MeanOnlyBatchNorm2d(4)
    with torch.no_grad():
        bn.bias.copy_(torch.tensor([0.0, 1.0, 2.0, 3.0]))
    x = (torch.randn(8, 4, 5, 5) * 3 + 7).requires_grad_()
    y = bn(x)
    torch.testing.assert_close(y.mean((0, 2, 3)), bn.bias.detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std((0, 2, 3)), x.std((0, 2, 3)))  # no division by sigma
    torch.testing.assert_close(bn.running_mean, 0.1 * x.mean((0, 2, 3)))
    (grad_x,) = torch.autograd.grad((y * torch.randn_like(y)).sum(), x)
    torch.testing.assert_close(grad_x.mean((0, 2, 3)), torch.zeros(4), atol=1e-5, rtol=0)  # eq 8: centred
    bn.eval()
    x = x.detach()
    torch.testing.assert_close(bn(x), x - bn.running_mean.reshape(1, -1, 1, 1) + bn.bias.reshape(1, -1, 1, 1))
    with pytest.raises(ValueError, match="expects input of rank 4"):
        bn(torch.randn(2, 4))
    assert fastwn.nn.MeanOnlyBatchNorm1d(3)(torch.randn(5, 3)).shape == (5, 3)
    assert fastwn.nn.MeanOnlyBatchNorm3d(2)(torch.randn(2, 2, 3, 3, 3)).shape == (2, 2, 3, 3, 3)


def pre_activations(model, x):
    """Outputs of each weight-normalised layer, recorded by forward hooks."""
    seen = []
    handles = [m.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
               for m in model.modules() if fastwn.nn.is_weight_normalized(m)]
    model(x)
    for h in handles:
        h.remove()
    return seen


def channel_stats(t):
    axes = [a for a in range(t.dim()) if a != (1 if t.dim() > 2 else 1)]
    return t.mean(axes), t.std(axes, unbiased=False)


def mlp_all_channels():
    return nn.Sequential(fastwn.nn.Linear(10, 32), nn.ReLU(), fastwn.nn.Linear(32, 32), nn.ReLU(), fastwn.nn.Linear(32, 3))


@pytest.mark.parametrize("make,shape", [(mlp_all_channels, (512, 10)), (lambda: cnn(fastwn_wn), (1024, 3, 16, 16)),
                                        (lambda: nn.Sequential(fastwn.nn.Conv1d(4, 6, 5), nn.ELU(), fastwn.nn.ConvTranspose1d(6, 3, 4, 2, dim=1)),
                                         (64, 4, 30))])
def test_data_dependent_init(make, shape):
    torch.manual_seed(6)
    model = make()
    batch = torch.randn(*shape) * 2 + 0.5
    fastwn.init.data_dependent_init_(model, batch)
    for t in pre_activations(model, batch):
        mean, std = channel_stats(t)
        torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-4, rtol=0)
        torch.testing.assert_close(std, torch.ones_like(std), atol=1e-3, rtol=0)
    fresh = torch.randn(*shape) * 2 + 0.5  # another batch of the same distribution: close, not exact
    for t in pre_activations(model, fresh):
        mean, std = channel_stats(t)
        assert mean.abs().max() < 0.35 and (std - 1).abs().max() < 0.35


def test_data_dependent_init_scale_skips_and_errors():
    model = nn.Sequential(fastwn.nn.Linear(3, 4), nn.Tanh(), fastwn.nn.ConvTranspose1d(4, 2, 3))
    x = torch.randn(256, 3)
    with pytest.warns(UserWarning, match="skipped ConvTranspose1d"):
        fastwn.init.data_dependent_init_(nn.Sequential(model[0], nn.Unflatten(1, (4, 1)), model[2]), x, init_scale=0.5)
    t = pre_activations(model[0], x)[0]
    torch.testing.assert_close(t.std(0, unbiased=False), torch.full((4,), 0.5), atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="no fastwn weight-normalised"):
        fastwn.init.data_dependent_init_(nn.Linear(2, 2), torch.randn(4, 2))
