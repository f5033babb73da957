"""Timing shared by the benchmarks (ops, models): medians of round-robin runs."""
from __future__ import annotations

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
    """Median time of each function, measured round-robin: whether a fresh output
    page-faults depends on the allocator's state, so all candidates share that state
    rather than each being timed in a phase of its own. At least ``reps`` rounds, more
    (up to MAX_REPS) until every function has run MIN_TIMED_S; past ``budget_s``
    seconds no new round starts once 3 are done."""
    clock = timer(device)
    for fn in fns.values():
        fn()  # warm-up (allocator, lazy init)
    times = {name: [] for name in fns}
    deadline = time.perf_counter() + budget_s
    for rep in range(MAX_REPS):
        if rep >= 3 and time.perf_counter() > deadline:
            break
        if rep >= reps and min(sum(ts) for ts in times.values()) >= MIN_TIMED_S:
            break
        for name, fn in fns.items():
            times[name].append(clock(fn))
    return {name: statistics.median(ts) for name, ts in times.items()}
