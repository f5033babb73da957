"""PyTorch's own weight-norm tests, ported to fastwn.

From test/nn/test_parametrization.py (test_weight_norm_parametrization,
test_weight_norm_state_dict_compat, test_weight_norm_pickle, test_weight_norm_deepcopy)
and test/test_nn.py (test_weight_norm, test_weight_norm_pickle, test_rnn_weight_norm).
Each asserts what the upstream test asserts, with fastwn.nn in place of PyTorch's
weight norm; where fastwn does better by design (its modules pickle) the test says so.
"""
import copy
import pickle
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import fastwn
from fastwn.nn import remove_weight_norm, weight_norm


def legacy_weight_norm(module, name="weight", dim=0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.nn.utils.weight_norm(module, name, dim)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weight_norm_parametrization(dtype):
    torch.manual_seed(0)
    x = torch.randn(3, 4, dtype=dtype)
    m = nn.Linear(4, 5, dtype=dtype)
    expected = m(x)

    m = weight_norm(m)
    assert m.parametrizations.weight.original1.size() == m.weight.size()
    assert m.parametrizations.weight.original0.size() == (5, 1)
    assert torch.equal(m(x), expected)  # upstream: assertEqual with dtype tolerance; fastwn: bit for bit

    parametrize.remove_parametrizations(m, "weight")  # PyTorch's helper on a fastwn module
    assert not hasattr(m, "parametrizations") and type(m) is nn.Linear
    assert torch.equal(m(x), expected)

    m = weight_norm(m, dim=1)
    assert m.parametrizations.weight.original1.size() == m.weight.size()
    assert m.parametrizations.weight.original0.size() == (1, 4)
    assert torch.equal(m(x), expected)

    m = nn.Linear(4, 5, dtype=dtype)
    expected = m(x)
    m = weight_norm(m, dim=None)
    assert torch.equal(m(x), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weight_norm(dtype):
    # test_nn.py's test of the legacy API, against fastwn.nn.weight_norm / remove_weight_norm.
    torch.manual_seed(1)
    x = torch.randn(3, 40, dtype=dtype)
    m = nn.Linear(40, 50).to(dtype=dtype)
    expected = m(x)

    m = weight_norm(m)
    assert m.parametrizations.weight.original1.size() == m.weight.size()
    assert m.parametrizations.weight.original0.size() == (50, 1)
    assert torch.equal(m(x), expected)

    m = remove_weight_norm(m)
    assert not hasattr(m, "parametrizations") and "weight" in m._parameters
    assert torch.equal(m(x), expected)

    m = weight_norm(m, dim=1)
    assert m.parametrizations.weight.original0.size() == (1, 40)
    assert torch.equal(m(x), expected)

    m = nn.Linear(40, 50).to(dtype=dtype)
    expected = m(x)
    m = weight_norm(m, dim=None)
    assert torch.equal(m(x), expected)

    with pytest.raises(RuntimeError, match="register two weight_norm hooks"):
        weight_norm(m)
    with pytest.raises(RuntimeError, match="register two weight_norm hooks"):
        legacy_weight_norm(m)  # PyTorch's legacy API on a fastwn module: PyTorch's error

    # float16: registering must work even where a forward would not (done before .cuda()).
    weight_norm(nn.Linear(4, 5, dtype=torch.float16))


def test_weight_norm_state_dict_compat():
    torch.manual_seed(2)
    m = legacy_weight_norm(nn.Linear(4, 5))
    m2 = weight_norm(nn.Linear(4, 5))
    m2.load_state_dict(m.state_dict())
    x = torch.randn(3, 4)
    torch.testing.assert_close(m(x), m2(x))


def test_weight_norm_pickle_and_deepcopy():
    # Upstream asserts that pickling its parametrized module raises; fastwn's pickle.
    m = weight_norm(nn.Linear(4, 5))
    x = torch.randn(3, 4)
    for m2 in (pickle.loads(pickle.dumps(m)), copy.deepcopy(m)):
        assert isinstance(m2, nn.Linear)
        assert torch.equal(m(x), m2(x))


@pytest.mark.parametrize("make,name,num_params", [
    (lambda: nn.LSTM(32, 32), "weight_ih_l0", 4),
    (lambda: nn.LSTM(32, 32, proj_size=16), "weight_hr_l0", 5),
    (lambda: nn.GRU(8, 8), "weight_hh_l0", 4),
])
def test_rnn_weight_norm(make, name, num_params):
    rnn = make()
    rnn = weight_norm(rnn, name=name)
    # The normalised weight becomes a computed tensor in the RNN's flat weight list,
    # at once, not at the next forward.
    assert sum(isinstance(p, nn.Parameter) for p in rnn._flat_weights) == num_params - 1
    rnn = remove_weight_norm(rnn, name=name)
    assert sum(isinstance(p, nn.Parameter) for p in rnn._flat_weights) == num_params
    assert rnn._parameters.get(name) is not None and name in dict(rnn.named_parameters())
    assert not any("parametrizations" in k for k in dict(rnn.named_parameters()))
    idx = rnn._flat_weights_names.index(name)
    assert rnn._flat_weights[idx] is rnn._parameters[name]
