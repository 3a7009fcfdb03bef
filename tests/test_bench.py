"""`make bench` (benchmarks/, outside the package) still runs against the library's current API:
a tiny run of it (eager, a few timing windows) whose CORL-style and own updates agree."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_benchmark_runs_and_both_updates_agree(tmp_path):
    out = tmp_path / "bench.md"
    env = {**os.environ, "TORCHDYNAMO_DISABLE": "1", "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "benchmarks.bench", "--quick", "--shapes", "hopper",
                    "--reps", "1", "--window", "0.05", "--rtg", "2000", "--out", str(out)],
                   cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)
    rows = [line.split("|") for line in out.read_text().splitlines() if line.startswith("| td3_bc")
            or line.startswith("| edac")]
    assert {row[1].strip() for row in rows} == {"td3_bc", "edac"}
    for row in rows:
        assert float(row[-2]) < 1e-4, row  # the largest relative loss difference
