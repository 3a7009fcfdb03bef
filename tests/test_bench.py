"""`make bench` (benchmarks/, outside the package) still runs against the library's current API:
a tiny run of it (eager, a few timing windows) whose CORL-style and own updates agree, with the run
loops (ours and CORL-style) timed beside the steps."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def tables(text: str) -> list[list[list[str]]]:
    """The Markdown tables of ``text``, each a list of rows of cells (header and rule dropped)."""
    found, current = [], None
    for line in text.splitlines():
        if line.startswith("|"):
            if current is None:
                current = []
                found.append(current)
            current.append([cell.strip() for cell in line.strip("|").split("|")])
        else:
            current = None
    return [t[2:] for t in found]


@pytest.mark.slow  # starts a process
def test_the_benchmark_runs_and_both_updates_agree(tmp_path):
    out = tmp_path / "bench.md"
    env = {**os.environ, "TORCHDYNAMO_DISABLE": "1", "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "benchmarks.bench", "--quick", "--shapes", "hopper",
                    "--reps", "1", "--window", "0.05", "--rtg", "2000", "--threads", "1",
                    "--transitions", "5000", "--out", str(out)],
                   cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)
    steps, loops = tables(out.read_text())
    assert {row[0] for row in steps} == {"td3_bc", "edac", "iql"} == {row[0] for row in loops}
    for row in steps:
        assert float(row[-1]) < 1e-4, row  # the largest relative loss difference
    for row in loops:  # every loop was timed: positive rates, ratios printed, its cost measured
        assert float(row[5]) > 0 and float(row[-5]) > 0 and row[-3].endswith("x**"), row
        cost, allowed = float(row[-2]), float(row[-1].rstrip("%"))
        rate = float(row[4])  # the compiled step's
        assert cost > 0 and allowed == pytest.approx(100 / (1 + cost * 1e-6 * rate), abs=0.06), row


def test_the_loop_profile_accounts_for_every_part_of_an_iteration(tmp_path, capsys):
    """benchmarks/profile_loop.py in process (eager, a small replay): the loop's time per update
    is its sampling, its step and the Trainer's rest; the report and its tables are written."""
    from benchmarks.profile_loop import main

    out = tmp_path / "profile.md"
    parts = main(["--compile", "eager", "--updates", "16", "--warmup", "2", "--transitions", "2000", "--rows", "5",
                  "--threads", "1", "--out", str(out)])
    assert parts["sample_us"] > 0 and parts["step_us"] > parts["sample_us"] and parts["bare_us"] > 0
    assert parts["loop_us"] == pytest.approx(parts["sample_us"] + parts["step_us"] + parts["rest_us"])
    shares = [float(row[2].rstrip("%")) for row in tables(out.read_text())[0][1:4]]
    assert sum(shares) == pytest.approx(100, abs=0.2)  # sample, step and the rest: the whole loop
    text = out.read_text()
    assert "## Our loop: top entries" in text and "## The bare step: top entries" in text
    assert text in capsys.readouterr().out
