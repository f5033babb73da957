"""The benchmark's timing method: what it measures must not depend on the order it runs in."""
import pytest

from fastwn import _timing


def _recording(calls):
    return {name: (lambda name=name: calls.append(name)) for name in "abcd"}


def test_median_times_runs_every_function_once_per_round_in_a_seeded_shuffled_order(monkeypatch):
    monkeypatch.setattr(_timing, "MIN_TIMED_S", 0.0)
    calls = []
    times = _timing.median_times(_recording(calls), "cpu", reps=40, budget_s=60.0)
    assert set(times) == set("abcd")
    warm_up, rounds = calls[:4], [calls[i:i + 4] for i in range(4, len(calls), 4)]
    assert warm_up == list("abcd") and len(rounds) == 40
    assert all(sorted(r) == list("abcd") for r in rounds)
    # Each function leads some rounds and follows each of the others in some: no fixed
    # predecessor whose leftovers it always inherits.
    assert {r[0] for r in rounds} == set("abcd")
    assert all({r[r.index(x) - 1] for r in rounds if r.index(x) > 0} == set("abcd") - {x} for x in "abcd")
    again = []
    _timing.median_times(_recording(again), "cpu", reps=40, budget_s=60.0)
    assert again == calls  # the same seed, the same order: reruns compare like with like


def test_bench_case_times_both_libraries_twice_and_pools_their_calls(monkeypatch):
    torch = pytest.importorskip("torch")
    from fastwn import bench

    names = []
    real = bench.sample_times

    def recording(fns, *args):
        names.extend(fns)
        return real(fns, *args)

    monkeypatch.setattr(bench, "sample_times", recording)
    row = bench.bench_case((64, 48), 0, torch.float32, "cpu", reps=3, budget_s=0.5)
    # The A/A control on both sides: each library's function under two names.
    assert {"fwd_fastwn_again", "fwd_torch_again", "fb_fastwn_again", "fb_torch_again"} <= set(names)
    t = row["times_s"]
    assert row["fwd_aa"] == pytest.approx(t["fwd_torch"] / t["fwd_torch_again"])
    assert row["fb_aa_fastwn"] == pytest.approx(t["fb_fastwn"] / t["fb_fastwn_again"])
    # A library's time is the median of all its calls, under both names: between its two
    # medians, and the ratios come from those.
    for name in ("fwd_fastwn", "fwd_torch", "fb_fastwn", "fb_torch"):
        low, high = sorted((t[name], t[name + "_again"]))
        assert low <= t[name + "_both"] <= high
    assert row["fwd_speedup"] == pytest.approx(t["fwd_torch_both"] / t["fwd_fastwn_both"])
    assert row["fb_speedup"] == pytest.approx(t["fb_torch_both"] / t["fb_fastwn_both"])
    row["case"] = "tiny"
    table = bench.format_table([row])
    assert table.splitlines()[0].count("A/A t/f") == 2
    assert f"{row['fb_aa']:.2f}/{row['fb_aa_fastwn']:.2f}" in table
