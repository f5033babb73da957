"""Builds and runs tests/cpp: the torch-free CPU kernels on their own, written with ordinary
stores, non-temporal ones (which the glue picks only for resident outputs larger than 3/4
of the last-level cache for w, 1/4 for grad_v, so the Python tests cannot be sure to get
them) and into populated fresh pages, against a float64 reference and each other;
populate_for_write itself; and the CUDA schedule's host code (plan_test), which needs no
GPU."""
import functools
import os
import pathlib
import shutil
import subprocess
import sys

import fastwn

ROOT = pathlib.Path(__file__).resolve().parent.parent


def tool(name):
    return shutil.which(name, path=os.path.dirname(sys.executable)) or shutil.which(name)


# `make sanitize` sets FASTWN_SANITIZE_FLAGS: the tests are then built with them, apart.
SANITIZE_FLAGS = os.environ.get("FASTWN_SANITIZE_FLAGS", "")


@functools.cache
def build_dir():
    build = ROOT / "build" / ("kernel-test-sanitize" if SANITIZE_FLAGS else "kernel-test")
    cmake, ninja = tool("cmake"), tool("ninja")
    generator = ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"] if ninja else []
    configure = [cmake, "-S", ROOT / "tests" / "cpp", "-B", build, *generator, f"-DCMAKE_CXX_FLAGS={SANITIZE_FLAGS}"]
    # The sanitized build compiles each kernel file once per ISA under ASan/UBSan: on the
    # 2-core VM, with other work running, single objects took up to 9 minutes (2026-12-03),
    # past a 600 s limit.
    for cmd in (configure, [cmake, "--build", build]):
        r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=1800)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return build


def run_test(name):
    r = subprocess.run([str(build_dir() / name)], capture_output=True, text=True, timeout=600)
    last = r.stdout.strip().splitlines()[-1]
    assert r.returncode == 0 and last.endswith(" 0 failed"), r.stdout[-3000:] + r.stderr[-3000:]
    return last


def test_cpu_kernels_streamed_and_stored_agree_and_match_float64():
    last = run_test("kernel_test")
    isas = len(fastwn.build_info()["cpu_isas"])  # what this CPU runs: the test skips the rest
    assert int(last.split()[0]) >= isas * 4 * 3 * 2 * 6  # ISAs, 4 dtypes, 3 shapes, 2 alignments, 6 checks


def test_cuda_plan_never_hangs_and_covers_every_shape():
    last = run_test("plan_test")
    assert int(last.split()[0]) > 200000
