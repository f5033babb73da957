"""Timing shared by the benchmarks (ops, models): medians over rounds in shuffled order."""
from __future__ import annotations

import random
import statistics
import time

import torch


def timer(device: str):
    """Returns time(fn) -> seconds, synchronised for CUDA."""
    if device == "cuda":
        def run(fn):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        return run

    def run(fn):
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    return run


# Fast functions run past --reps until each has run this long: a 50 us op's median over
# 15 single calls moved by 20 % between runs on the shared VM.
MIN_TIMED_S = 0.25
MAX_REPS = 5000


def median_times(fns: dict, device: str, reps: int, budget_s: float) -> dict:
    """Median time of each function (sample_times' rounds)."""
    return {name: statistics.median(ts) for name, ts in sample_times(fns, device, reps, budget_s).items()}


def sample_times(fns: dict, device: str, reps: int, budget_s: float) -> dict:
    """Every timing of each function, measured in rounds that run each once: whether a
    fresh output page-faults depends on the allocator's state, so all candidates share
    that state rather than each being timed in a phase of its own. At least ``reps``
    rounds, more (up to MAX_REPS) until every function has run MIN_TIMED_S; past
    ``budget_s`` seconds no new round starts once 3 are done.

    Each round runs the functions in a fresh random order (seeded: reruns repeat it).
    In a fixed order, each function always follows the same one and inherits what that
    one left in the heap and the caches. On the Zen 3 VM, two copies of one forward +
    backward (256x256x3x3 fp32) timed in fixed rounds differed by 3-12 %, as much as the
    libraries do; in shuffled rounds, by at most 4 %."""
    clock = timer(device)
    for fn in fns.values():
        fn()  # warm-up (allocator, lazy init)
    times = {name: [] for name in fns}
    order = list(fns)
    rng = random.Random(0)
    deadline = time.perf_counter() + budget_s
    for rep in range(MAX_REPS):
        if rep >= 3 and time.perf_counter() > deadline:
            break
        if rep >= reps and min(sum(ts) for ts in times.values()) >= MIN_TIMED_S:
            break
        rng.shuffle(order)
        for name in order:
            times[name].append(clock(fns[name]))
    return times
