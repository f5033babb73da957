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


def test_bench_case_reports_the_a_a_control():
    torch = pytest.importorskip("torch")
    from fastwn import bench

    row = bench.bench_case((64, 48), 0, torch.float32, "cpu", reps=3, budget_s=0.5)
    t = row["times_s"]
    assert row["fwd_aa"] == pytest.approx(t["fwd_torch"] / t["fwd_torch_again"])
    assert row["fb_aa"] == pytest.approx(t["fb_torch"] / t["fb_torch_again"])
    row["case"] = "tiny"
    table = bench.format_table([row])
    assert table.splitlines()[0].count("A/A") == 2 and f"{row['fb_aa']:.2f}" in table
