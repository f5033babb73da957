"""The documentation's evidence scripts and the demo run, assert their claims, and reproduce."""
import pathlib
import subprocess
import sys

import pytest

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs" / "figures"


def run(*args):
    r = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


@pytest.mark.parametrize("script,last_line", [("identities.py", "all identities hold"),
                                              ("ddi.py", "pre-activations are standardised")])
def test_doc_scripts_hold(script, last_line):
    out = run(str(DOCS / script))
    assert out.strip().splitlines()[-1].startswith(last_line)


def test_doc_shows_the_scripts_current_output():
    doc = (DOCS.parent / "weight-normalization.md").read_text()
    for line in run(str(DOCS / "identities.py")).splitlines()[:-1]:
        assert line in doc, f"docs/weight-normalization.md does not show: {line!r}"


def test_demo_is_reproducible_with_its_seed(tmp_path):
    first = run("-m", "fastwn", "demo", "--fast", "--png", str(tmp_path / "a.png"))
    second = run("-m", "fastwn", "demo", "--fast", "--png", "")
    table = lambda out: [line for line in out.splitlines() if not line.startswith("(")]  # noqa: E731
    assert table(first) == table(second)
    assert (tmp_path / "a.png").stat().st_size > 10_000
    assert len(table(first)) == 3 + 5  # header lines + one row per variant
