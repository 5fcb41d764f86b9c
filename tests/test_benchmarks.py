"""`make bench`'s script runs to its table: once at 1× (the real 2021 row counts, the
smallest scale it takes), taxi-job and the textbook pipeline side by side. The script
itself checks that the two predicted the same rows in the same order (it raises if not);
this test checks its exit code and that the table says taxi-job's RMSE is no worse.
Timings are not asserted: they are the benchmark's business, not a test's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_the_benchmark_runs_and_taxi_job_matches_the_textbook(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--scales", "1", "--repeat", "1",
         "--quick", "--workdir", str(tmp_path), "--markdown"],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    # The table's Markdown rows: | what | at 1× | target |
    rows = {
        cells[0]: cells[1]
        for line in done.stdout.splitlines()
        if line.startswith("| ")
        for cells in [[c.strip() for c in line.strip("|").split(" | ")]]
    }
    assert rows["rows train / eval / infer"] == "1,369,769 / 1,371,709 / 1,925,152"
    difference, verdict = rows["RMSE eval: taxi-job − textbook"].split()
    assert verdict == "ok" and float(difference) <= 0, rows
    largest, _, mean = rows["predictions: abs(taxi-job − textbook) max / mean (min)"].split()
    assert float(largest) < 1 and float(mean) < 1e-3, rows  # minutes
