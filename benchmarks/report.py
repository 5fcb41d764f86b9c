"""Benchmark: `taxi-job report` on a large volume, and what the plotting library costs.

Not a test: numbers for people. Builds a synthetic volume (tests/reportvolume.py: real
model weights, made-up metadata and journal) of 200 model versions and 50,000 predicted
inputs, next to a small one (20 versions, 300 inputs) as the baseline of the same run, and
times whole `taxi-job report` processes on each (wall time, peak RSS, page size). Then
`taxi-job --help` and `taxi-job infer` (nothing to do) against the same commands with
matplotlib uninstalled would be the true baseline; instead it checks that neither loads
matplotlib, and times `import matplotlib.figure` alone.

    .venv/bin/python benchmarks/report.py [--versions 200] [--inputs 50000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from reportvolume import make_volume  # noqa: E402

TAXI_JOB = str(Path(sys.executable).with_name("taxi-job"))


def timed(args: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True)
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of children is the largest so far: only a new high is this child's.
    return wall, max(peak, before) / 1024


def weights(work: Path) -> dict:
    data = work / "data"
    for month, rows in (("2021-01", 20000), ("2021-02", 20000)):
        subprocess.run(
            [TAXI_JOB, "sample-data", "--month", month, "--rows", str(rows), str(data)],
            check=True,
            capture_output=True,
        )
    root = work / "trained"
    subprocess.run(
        [
            TAXI_JOB, "train", "--artifacts", str(root),
            "--train-data", str(data / "yellow_tripdata_2021-01.parquet"),
            "--eval-data", str(data / "yellow_tripdata_2021-02.parquet"),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    version = (root / "CURRENT").read_text().strip()
    return json.loads((root / "models" / version / "model.json").read_text())["model"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", type=int, default=200)
    parser.add_argument("--inputs", type=int, default=50000)
    parser.add_argument("--repeat", type=int, default=3)
    opts = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="taxi-job-report-bench-"))
    try:
        model = weights(work)
        rows = []
        for name, versions, inputs in (
            ("baseline", 20, 300),
            ("large", opts.versions, opts.inputs),
        ):
            root = work / name / "artifacts"
            make_volume(root, model, versions=versions, inputs=inputs, records_from=versions // 4)
            journal = sum(p.stat().st_size for p in (root / "runs").rglob("*") if p.is_file())
            out = work / f"{name}.html"
            runs = [
                timed([TAXI_JOB, "report", "--artifacts", str(root), "--output", str(out)])
                for _ in range(opts.repeat)
            ]
            rows.append(
                (
                    name,
                    versions,
                    inputs,
                    journal / 2**20,
                    statistics.median(w for w, _ in runs),
                    max(m for _, m in runs),
                    out.stat().st_size / 1024,
                )
            )
        print(
            "| volume | versions | inputs | journal MiB | report s (median) | peak RSS MiB "
            "| page KiB |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name, v, i, j, wall, rss, size in rows:
            print(f"| {name} | {v} | {i} | {j:.1f} | {wall:.2f} | {rss:.0f} | {size:.0f} |")
        base, large = rows
        print(f"\nlarge / baseline: time {large[4] / base[4]:.2f}x, page {large[6] / base[6]:.2f}x")
        imp = [
            timed([sys.executable, "-c", "import matplotlib.figure"])[0] for _ in range(opts.repeat)
        ]
        py = [timed([sys.executable, "-c", "pass"])[0] for _ in range(opts.repeat)]
        print(
            f"import matplotlib.figure: {statistics.median(imp) - statistics.median(py):.3f} s "
            "over a bare interpreter (paid by `report` and the page refresh after `train` only)"
        )
        helps = [timed([TAXI_JOB, "--help"])[0] for _ in range(opts.repeat)]
        print(f"taxi-job --help: {statistics.median(helps):.3f} s (loads no matplotlib)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
