"""Builds and runs tests/cpp: the torch-free CPU kernels on their own, with and without
non-temporal stores (which the glue picks only for resident outputs larger than the
last-level cache, so the Python tests cannot choose them), against a float64 reference."""
import os
import pathlib
import shutil
import subprocess
import sys

import fastwn

ROOT = pathlib.Path(__file__).resolve().parent.parent


def tool(name):
    return shutil.which(name, path=os.path.dirname(sys.executable)) or shutil.which(name)


def test_cpu_kernels_streamed_and_stored_agree_and_match_float64():
    build = ROOT / "build" / "kernel-test"
    cmake, ninja = tool("cmake"), tool("ninja")
    generator = ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"] if ninja else []
    for cmd in ([cmake, "-S", ROOT / "tests" / "cpp", "-B", build, *generator], [cmake, "--build", build]):
        r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    r = subprocess.run([str(build / "kernel_test")], capture_output=True, text=True, timeout=600)
    last = r.stdout.strip().splitlines()[-1]
    assert r.returncode == 0 and last.endswith(" 0 failed"), r.stdout[-3000:]
    isas = len(fastwn.build_info()["cpu_isas"])  # what this CPU runs: the test skips the rest
    assert int(last.split()[0]) >= isas * 4 * 3 * 2 * 6  # ISAs, 4 dtypes, 3 shapes, 2 alignments, 6 checks
