"""The wheel, end to end: built with the README's command, installed into a fresh
virtualenv next to the same torch release, imported and used there. Run by a CUDA build's
suite (make cuda-test), it builds and checks a CUDA wheel (FASTWN_CUDA=ON)."""
import json
import os
import pathlib
import subprocess
import sys
import zipfile

import torch

import fastwn

ROOT = pathlib.Path(__file__).resolve().parent.parent
RELEASE = torch.__version__.split("+", 1)[0]

SMOKE = """
import json, sys, torch, fastwn
assert fastwn.HAS_EXTENSION
info = fastwn.build_info()
expected = json.loads(sys.argv[1])  # what the build under test reports
assert info["cuda"] is expected["cuda"] and info["cuda_archs"] == expected["cuda_archs"], info
assert bool(info["cuda_archs"]) == info["cuda"]   # a CPU wheel claims no CUDA; a CUDA one its archs
if info["cuda"]:
    assert "CUDA" in torch._C._dispatch_dump("fastwn::weight_norm_fwd")
assert info["torch_version"].split("+")[0] == torch.__version__.split("+")[0]
v, g = torch.randn(7, 5, requires_grad=True), torch.randn(7, requires_grad=True)
w = fastwn.weight_norm(v, g, 0)
torch.testing.assert_close(w, torch._weight_norm(v, g.reshape(7, 1), 0))
w.sum().backward()
layer = fastwn.nn.Conv1d(3, 4, 3)
print("ok", fastwn.cpu_isa(), type(layer).__name__, fastwn.__file__)
"""


def run(*cmd, **kw):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=900, **kw)
    assert r.returncode == 0, (cmd, r.stdout[-2000:], r.stderr[-3000:])
    return r.stdout


def test_wheel_installs_and_runs_in_a_fresh_virtualenv(tmp_path):
    dist = tmp_path / "dist"
    # FASTWN_CUDA comes from the environment: ON under make cuda-test.
    run(sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q", ROOT, "-w", dist,
        env={**os.environ, "FASTWN_CUDA": os.environ.get("FASTWN_CUDA", "OFF")})
    (wheel,) = dist.glob("fastwn-*.whl")
    with zipfile.ZipFile(wheel) as z:
        metadata = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    assert f"Requires-Dist: torch=={RELEASE}\n" in metadata  # the torch release it was built against

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    py = venv / "bin" / "python"
    run(py, "-m", "pip", "install", "-q", f"torch=={RELEASE}")
    run(py, "-m", "pip", "install", "-q", "--no-deps", wheel)
    info = fastwn.build_info()
    expected = json.dumps({"cuda": info["cuda"], "cuda_archs": info["cuda_archs"]})
    out = run(py, "-c", SMOKE, expected, cwd=tmp_path, env={"FASTWN_REQUIRE_EXTENSION": "1", "PATH": "/usr/bin:/bin"})
    assert out.startswith("ok ") and str(venv) in out
