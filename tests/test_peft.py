"""fastwn.peft.enable against PEFT itself (peft 0.21): the same model run through PEFT's
DoRA and through fastwn's must agree in outputs and every gradient, through PEFT's whole
adapter life cycle. Several tests follow PEFT's own DoRA tests (initial identity, merge /
unmerge round trips, safe merge, several adapters, save and reload)."""
import copy
import json
import os
import sys
import warnings

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

peft = pytest.importorskip("peft")
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402

import fastwn  # noqa: E402
import fastwn.peft  # noqa: E402
from test_dora import LargestTensor  # noqa: E402
from test_integration import _exit_cleanly, _init  # noqa: E402


class Net(nn.Module):
    def __init__(self, bias=True, dtype=torch.float32):
        super().__init__()
        self.a = nn.Linear(32, 48, bias=bias, dtype=dtype)
        self.b = nn.Linear(48, 24, bias=bias, dtype=dtype)
        self.head = nn.Linear(24, 8, dtype=dtype)

    def forward(self, x):
        return self.head(torch.relu(self.b(torch.relu(self.a(x)))))


def dora_model(seed=0, dropout=0.0, bias=True, dtype=torch.float32, r=4, **kw):
    torch.manual_seed(seed)
    cfg = LoraConfig(r=r, lora_alpha=2 * r, target_modules=["a", "b"], use_dora=True, lora_dropout=dropout,
                     init_lora_weights=False, **kw)  # random B: away from the identity start
    return get_peft_model(Net(bias=bias, dtype=dtype), cfg)


def pair(**kw):
    """(PEFT's model, the same model switched to fastwn)."""
    ours = dora_model(**kw)
    theirs = copy.deepcopy(ours)
    done = fastwn.peft.enable(ours)
    assert done.left == {} and len(done.converted) == 2
    return theirs, ours


def rel_err(got, ref):
    return ((got.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


def run(model, x, seed=1):
    torch.manual_seed(seed)  # the same dropout masks in both models
    y = model(x)
    y.square().sum().backward()
    return y, {k.removeprefix("_orig_mod."): p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def assert_same(theirs, ours, x, tol=1e-5):
    y_t, g_t = run(theirs, x)
    y_o, g_o = run(ours, x)
    assert rel_err(y_o, y_t) <= tol
    assert g_t.keys() == g_o.keys() and any("magnitude" in k for k in g_t)
    for k in g_t:
        assert rel_err(g_o[k], g_t[k]) <= tol, k


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_matches_peft_fp32(isa, bias, dropout):
    theirs, ours = pair(bias=bias, dropout=dropout)
    x = torch.randn(3, 5, 32)
    assert_same(theirs, ours, x)
    theirs.eval(), ours.eval()
    with torch.no_grad():
        assert rel_err(ours(x), theirs(x)) <= 1e-5


def test_fan_in_fan_out_matches_peft():
    """GPT-2's Conv1D stores its weight [in, out]; PEFT transposes it (fan_in_fan_out)."""
    from transformers.pytorch_utils import Conv1D

    class Gpt2Like(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_attn = Conv1D(36, 20)  # nf = out, nx = in
            self.c_proj = Conv1D(20, 36)

        def forward(self, x):
            return self.c_proj(torch.tanh(self.c_attn(x)))

    torch.manual_seed(0)
    cfg = LoraConfig(r=4, target_modules=["c_attn", "c_proj"], use_dora=True, fan_in_fan_out=True,
                     init_lora_weights=False)
    theirs = get_peft_model(Gpt2Like(), cfg)
    ours = copy.deepcopy(theirs)
    assert len(fastwn.peft.enable(ours).converted) == 2
    assert_same(theirs, ours, torch.randn(4, 6, 20))


def reference_error(model, x, dtype):
    """The model's output error against the same model in float64 (PEFT's own path)."""
    ref = copy.deepcopy(model).double()
    fastwn.peft.disable(ref)
    with torch.no_grad():
        exact = ref(x.double())
        return exact


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_models_within_twice_peft_error(dtype):
    theirs, ours = pair(dtype=dtype)
    x = torch.randn(16, 32, dtype=dtype)
    exact = reference_error(theirs, x, dtype)
    with torch.no_grad():
        err_t = (theirs(x).double() - exact).abs().max().item()
        err_o = (ours(x).double() - exact).abs().max().item()
    assert ours(x).dtype == dtype
    assert err_o <= 2 * err_t, (err_o, err_t)


def test_bf16_autocast_within_twice_peft_error():
    theirs, ours = pair()
    x = torch.randn(16, 32)
    exact = reference_error(theirs, x, torch.float32)
    errs = []
    for model in (theirs, ours):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = model(x)
        errs.append((y.double() - exact).abs().max().item())
        y.float().square().sum().backward()
        assert all(p.grad.dtype == torch.float32 for p in model.parameters() if p.grad is not None)
    assert errs[1] <= 2 * errs[0], errs


def test_bf16_base_with_fp32_adapters():
    """PEFT's default on bf16 models: adapter weights upcast to float32."""
    theirs, ours = pair(dtype=torch.bfloat16)
    for model in (theirs, ours):
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.data = p.data.float()
    x = torch.randn(8, 32, dtype=torch.bfloat16)
    exact = reference_error(theirs, x, torch.bfloat16)
    with torch.no_grad():
        err_t = (theirs(x).double() - exact).abs().max().item()
        err_o = (ours(x).double() - exact).abs().max().item()
    assert err_o <= 2 * err_t, (err_o, err_t)


def test_identity_at_initialisation():
    """As PEFT's tests check: with the default init (B = 0) a DoRA model is its base model."""
    torch.manual_seed(0)
    base = Net()
    x = torch.randn(4, 32)
    expected = base(x)
    model = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, target_modules=["a", "b"], use_dora=True))
    fastwn.peft.enable(model)
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("safe", [False, True])
def test_merge_unmerge_and_unload(safe):
    theirs, ours = pair()
    x = torch.randn(5, 32)
    ours.eval(), theirs.eval()
    with torch.no_grad():
        before = ours(x)
        ours.merge_adapter(safe_merge=safe) if not safe else ours.base_model.merge_adapter()
        merged = ours(x)
        ours.unmerge_adapter()
        after = ours(x)
    torch.testing.assert_close(merged, before, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
    plain = copy.deepcopy(ours).merge_and_unload(safe_merge=safe)
    assert not any("lora" in n for n, _ in plain.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(plain(x), theirs(x), rtol=1e-4, atol=1e-5)


def test_several_adapters_and_disable():
    theirs, ours = pair()
    cfg = LoraConfig(r=2, lora_alpha=3, target_modules=["a", "b"], use_dora=True, init_lora_weights=False)
    for model in (theirs, ours):
        torch.manual_seed(7)
        model.add_adapter("second", cfg)  # added after enable: fastwn's too
    layer = ours.base_model.model.a
    assert type(layer.lora_variant["second"]) is fastwn.peft.DoraLinearVariant
    x = torch.randn(6, 32)
    for name in ("second", "default"):
        theirs.set_adapter(name), ours.set_adapter(name)
        assert_same(theirs, ours, x)
    theirs.eval(), ours.eval()
    with torch.no_grad():
        with theirs.disable_adapter(), ours.disable_adapter():
            torch.testing.assert_close(ours(x), theirs(x))
        # PEFT rejects mixed batches (adapter_names) with DoRA, and so does the drop-in.
        with pytest.raises(ValueError, match="adapter_names"):
            ours(x, adapter_names=["default"] * 6)


def test_save_and_reload(tmp_path):
    theirs, ours = pair()
    ours.save_pretrained(tmp_path / "adapter")
    theirs.save_pretrained(tmp_path / "theirs")
    f = "adapter_model.safetensors"  # PEFT's checkpoint, byte for byte
    assert (tmp_path / "adapter" / f).read_bytes() == (tmp_path / "theirs" / f).read_bytes()
    # The config, key for key. PEFT keeps target_modules as a set and writes it in the
    # set's iteration order, which varies with the process's string hashes: two PEFT
    # models saved in one process wrote ["a", "b"] and ["b", "a"].
    configs = [json.loads((tmp_path / d / "adapter_config.json").read_text()) for d in ("adapter", "theirs")]
    for c in configs:
        c["target_modules"] = sorted(c["target_modules"])
    assert configs[0] == configs[1]
    torch.manual_seed(0)
    base = Net()
    base.load_state_dict({k.replace("base_model.model.", "").replace(".base_layer", ""): v
                          for k, v in theirs.state_dict().items() if "lora_" not in k})
    loaded = PeftModel.from_pretrained(base, tmp_path / "adapter")
    assert len(fastwn.peft.enable(loaded).converted) == 2
    x = torch.randn(3, 32)
    theirs.eval(), loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), theirs(x), rtol=1e-5, atol=1e-6)
    loaded.load_adapter(tmp_path / "theirs", adapter_name="again")  # a reloaded adapter is fastwn's too
    assert type(loaded.base_model.model.b.lora_variant["again"]) is fastwn.peft.DoraLinearVariant


def test_layers_left_on_peft_are_named_once():
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(8, 8)
            self.emb = nn.Embedding(10, 8)
            self.conv = nn.Conv1d(8, 8, 3)

    model = get_peft_model(Mixed(), LoraConfig(r=2, target_modules=["lin", "emb", "conv"], use_dora=True))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        done = fastwn.peft.enable(model)
    assert done.converted == ["base_model.model.lin [default]"]
    assert set(done.left) == {"base_model.model.emb [default]", "base_model.model.conv [default]"}
    messages = [str(w.message) for w in caught if "fastwn.peft.enable" in str(w.message)]
    assert len(messages) == 1 and "emb" in messages[0] and "conv" in messages[0] and "Embedding" in messages[0]


def test_disable_restores_peft():
    theirs, ours = pair()
    fastwn.peft.disable(ours)
    assert type(ours.base_model.model.a.lora_variant["default"]) is peft.tuners.lora.variants.DoraLinearVariant
    fastwn.peft.enable(ours)
    fastwn.peft.enable(ours)  # idempotent
    assert type(ours.base_model.model.a.lora_variant["default"]) is fastwn.peft.DoraLinearVariant


def test_eval_norm_cache_is_never_stale():
    theirs, ours = pair()
    theirs.eval(), ours.eval()
    x = torch.randn(4, 32)

    def check():
        with torch.no_grad():
            torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-6)

    check()
    cache = ours.base_model.model.a.lora_magnitude_vector["default"]._fastwn_norm_cache
    assert len(cache) == 1
    for name in ("lora_A.default.weight", "lora_B.default.weight", "base_layer.weight",
                 "lora_magnitude_vector.default.weight"):
        for model in (theirs, ours):
            with torch.no_grad():
                model.base_model.model.a.get_parameter(name).mul_(1.3)
        check()
    with torch.no_grad():
        for model in (theirs, ours):
            model.merge_adapter()
        check()
        for model in (theirs, ours):
            model.unmerge_adapter()
        check()
    ours.train()  # training forwards never use the cache, and drop it
    ours(x)
    assert len(cache) == 0


def test_compile_fullgraph_trains():
    theirs, ours = pair()
    x = torch.randn(4, 32)
    compiled = torch.compile(ours)
    y, grads = run(compiled, x)
    y_t, grads_t = run(theirs, x)
    assert rel_err(y, y_t) <= 1e-5
    for k in grads_t:
        assert rel_err(grads[k], grads_t[k]) <= 1e-5, k


def test_no_out_by_in_tensor_where_peft_makes_several():
    torch.manual_seed(0)

    class Wide(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(256, 192)

        def forward(self, x):
            return self.proj(x)

    cfg = LoraConfig(r=4, target_modules=["proj"], use_dora=True, init_lora_weights=False)
    theirs = get_peft_model(Wide(), cfg)
    ours = copy.deepcopy(theirs)
    fastwn.peft.enable(ours)
    x = torch.randn(8, 256)
    largest = []
    for model in (theirs, ours):
        with LargestTensor() as rec:
            model(x).square().sum().backward()
        largest.append(rec.largest[0])
    assert largest[0] >= 256 * 192  # PEFT: B@A, W0 + s B@A, the identity...
    assert largest[1] < 256 * 192 // 4, largest


# ---- DDP and FSDP2 (gloo on loopback) ----

def _train_step(model, x):
    model(x).square().mean().backward()
    return {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}


def _worker_model():
    torch.set_num_threads(1)
    model = dora_model()
    fastwn.peft.enable(model)
    return model


def _ddp_worker(rank, world, x, out_dir):
    from torch.nn.parallel import DistributedDataParallel

    dist = _init(rank, world, out_dir)
    try:
        ddp = DistributedDataParallel(_worker_model())
        grads = _train_step(ddp, x.chunk(world)[rank])
        torch.save({k.removeprefix("module."): g for k, g in grads.items()}, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()
    _exit_cleanly()


def _fsdp_worker(rank, world, x, out_dir):
    from torch.distributed.fsdp import fully_shard

    dist = _init(rank, world, out_dir)
    try:
        model = _worker_model()
        for layer in (model.base_model.model.a, model.base_model.model.b):
            fully_shard(layer)
        fully_shard(model)
        grads = _train_step(model, x.chunk(world)[rank])
        full = {k: g.full_tensor() for k, g in grads.items()}
        model.eval()  # the eval cache under FSDP2: a weight changed in place between forwards
        with torch.no_grad():
            first = model(x)
            for p in model.parameters():
                if p.requires_grad:
                    p.mul_(1.1)
            second = model(x)
        if rank == 0:
            torch.save({"grads": full, "eval": (first, second)}, os.path.join(out_dir, "fsdp.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()
    _exit_cleanly()


def _single_reference(x):
    model = dora_model()  # PEFT's own path, one process, the whole batch
    return model, _train_step(model, x)


def test_ddp_gloo_matches_peft(tmp_path):
    torch.manual_seed(4)
    x = torch.randn(8, 32)
    mp.start_processes(_ddp_worker, args=(2, x, str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    _, expected = _single_reference(x)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got.keys() == expected.keys()
        for k in expected:
            assert rel_err(got[k], expected[k]) <= 1e-5, (rank, k)


def test_fsdp2_fully_shard_matches_peft(tmp_path):
    pytest.importorskip("torch.distributed.fsdp")
    torch.manual_seed(5)
    x = torch.randn(8, 32)
    mp.start_processes(_fsdp_worker, args=(2, x, str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    model, expected = _single_reference(x)
    got = torch.load(tmp_path / "fsdp.pt")
    for k in expected:
        assert rel_err(got["grads"][k], expected[k]) <= 1e-5, k
    model.eval()
    with torch.no_grad():
        first = model(x)
        for p in model.parameters():
            if p.requires_grad:
                p.mul_(1.1)
        second = model(x)
    assert rel_err(got["eval"][0], first) <= 1e-5
    assert rel_err(got["eval"][1], second) <= 1e-5  # the cached norm followed the change


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))


# ---- ported from PEFT's tests/test_dora_bf16_zero_rows.py (peft#2049) ----
# A zero row of W0 (Llama-3.1-8B's o_proj has 511) gives n = m = 0 at the start, and
# PEFT 0.21's m / n is 0/0 = NaN. fastwn takes m / n = 0 there (the row has no
# direction): the output is finite and equals PEFT's on every other row.

class _TinyLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(64, 32, bias=False)

    def forward(self, x):
        return self.proj(x)


def _zero_row_models(dtype, underflow):
    torch.manual_seed(0)
    model = _TinyLinear()
    with torch.no_grad():
        if underflow:
            model.proj.weight[:8] = 1e-30  # nonzero in fp32, zero once rounded to bf16/fp16
        else:
            model.proj.weight[:8].zero_()
    model = model.to(dtype)
    theirs = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["proj"], use_dora=True))
    ours = copy.deepcopy(theirs)
    fastwn.peft.enable(ours)
    return theirs, ours


@pytest.mark.parametrize("dtype,underflow", [(torch.bfloat16, False), (torch.float16, False), (torch.float32, False),
                                             (torch.bfloat16, True), (torch.float16, True)])
def test_zero_rows_do_not_nan(dtype, underflow):
    theirs, ours = _zero_row_models(dtype, underflow)
    x = torch.randn(2, 64, dtype=dtype)
    ours.eval(), theirs.eval()
    with torch.no_grad():
        out, ref = ours(x), theirs(x)
    assert torch.isfinite(out).all()
    assert (out[:, :8] == 0).all()
    torch.testing.assert_close(out[:, 8:], ref[:, 8:])
    ours.train()  # and a training step stays finite
    ours(x).float().square().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in ours.parameters() if p.grad is not None)
