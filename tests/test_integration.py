"""fastwn modules under torch.compile, torch.export, autocast, DDP and FSDP2."""
import os
import sys

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

import fastwn
from test_nn import MODELS, HifiGanLike, fastwn_wn, mlp, mlp_all_channels


def test_compile_fullgraph_trains_without_recompiling():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = mlp(fastwn_wn)
    eager = mlp(fastwn_wn)
    eager.load_state_dict(model.state_dict())
    opt, opt_e = torch.optim.SGD(model.parameters(), lr=0.1), torch.optim.SGD(eager.parameters(), lr=0.1)
    compiled = torch.compile(model, fullgraph=True)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for step in range(4):
            x = torch.randn(8, 10)
            for m, o in ((compiled, opt), (eager, opt_e)):
                o.zero_grad()
                m(x).square().mean().backward()
                o.step()
    for p, q in zip(model.parameters(), eager.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_export():
    model = HifiGanLike(fastwn_wn).eval()
    x = torch.randn(2, 8, 20)
    exported = torch.export.export(model, (x,))
    assert any("fastwn.weight_norm_fwd" in str(n.target) for n in exported.graph.nodes)
    torch.testing.assert_close(exported.module()(x), model(x))


@pytest.mark.parametrize("name", ["mlp", "cnn", "hifigan"])
def test_autocast_bf16(name):
    make, data = MODELS[name]
    torch.manual_seed(1)
    model = make(fastwn_wn)
    reference = make(torch.nn.utils.parametrizations.weight_norm)
    reference.load_state_dict(model.state_dict())
    x = data()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, ref = model(x), reference(x)
    assert out.dtype == ref.dtype
    torch.testing.assert_close(out.float(), ref.float())
    out.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())


def _init(rank, world, out_dir):
    # A file rendezvous: no port to pick (and race for) before the ranks bind it.
    import torch.distributed as dist

    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    dist.init_process_group("gloo", init_method=f"file://{os.path.join(out_dir, 'rendezvous')}", rank=rank,
                            world_size=world)
    return dist


def _exit_cleanly():
    # A rank that finished leaves without running static destructors: at interpreter exit
    # the process group's C++ threads raced their destructors to std::terminate (SIGABRT,
    # seen in CI after all work was done). Failures raise before reaching this.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _ddp_worker(rank, world, x, state, out_dir):
    from torch.nn.parallel import DistributedDataParallel

    dist = _init(rank, world, out_dir)
    try:
        torch.set_num_threads(1)
        model = mlp(fastwn_wn)
        model.load_state_dict(state)
        half = x.chunk(world)[rank]
        fastwn.init.data_dependent_init_(model, half)  # moments all-reduced: the whole batch's
        ddp = DistributedDataParallel(model)
        ddp(half).square().mean().backward()
        torch.save({"params": {k: p.detach() for k, p in model.named_parameters()},
                    "grads": {k: p.grad for k, p in model.named_parameters()}}, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()
    _exit_cleanly()


def test_ddp_gloo_matches_single_process(tmp_path):
    torch.manual_seed(2)
    x = torch.randn(32, 10)
    single = mlp(fastwn_wn)
    state = {k: v.clone() for k, v in single.state_dict().items()}
    mp.start_processes(_ddp_worker, args=(2, x, state, str(tmp_path)), nprocs=2, join=True,
                       start_method="spawn")
    fastwn.init.data_dependent_init_(single, x)
    single(x).square().mean().backward()
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for k, p in single.named_parameters():
            torch.testing.assert_close(got["params"][k], p.detach(), rtol=1e-5, atol=1e-6, msg=f"rank {rank} {k}")
            torch.testing.assert_close(got["grads"][k], p.grad, rtol=1e-4, atol=1e-6, msg=f"rank {rank} {k} grad")


def _fsdp_worker(rank, world, x, state, out_dir):
    from torch.distributed.fsdp import fully_shard

    dist = _init(rank, world, out_dir)
    try:
        torch.set_num_threads(1)
        model = mlp_all_channels()
        model.load_state_dict(state)
        for layer in model:
            if fastwn.nn.is_weight_normalized(layer):
                fully_shard(layer)
        fully_shard(model)
        model(x.chunk(world)[rank]).square().mean().backward()
        grads = {k: p.grad.full_tensor() for k, p in model.named_parameters()}
        if rank == 0:
            torch.save(grads, os.path.join(out_dir, "grads.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()
    _exit_cleanly()


def test_fsdp2_fully_shard(tmp_path):
    # Per-channel layers only: fully_shard rejects 0-dim parameters, and dim=None keeps
    # PyTorch's 0-dim g (so checkpoints stay interchangeable with torch's).
    pytest.importorskip("torch.distributed.fsdp")
    torch.manual_seed(3)
    x = torch.randn(16, 10)
    single = mlp_all_channels()
    state = {k: v.clone() for k, v in single.state_dict().items()}
    try:
        mp.start_processes(_fsdp_worker, args=(2, x, state, str(tmp_path)), nprocs=2, join=True,
                           start_method="spawn")
    except mp.ProcessRaisedException as e:
        if "cpu" in str(e).lower() or "gloo" in str(e).lower() or "not supported" in str(e).lower():
            pytest.skip(f"FSDP2 fully_shard does not run on CPU/gloo in torch {torch.__version__}: {str(e)[-300:]}")
        raise
    single(x).square().mean().backward()
    grads = torch.load(tmp_path / "grads.pt")
    for k, p in single.named_parameters():
        torch.testing.assert_close(grads[k], p.grad, rtol=1e-4, atol=1e-6, msg=k)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
