"""What the command line costs at 1x: `taxi-job train` then `taxi-job infer` as two whole
processes (what a CronJob pair does), against the floor of the same work in one process
(one interpreter start, one set of imports, the same code through the same CLI), on the
2021 row counts of benchmarks/run.py, and where the time of each goes.

    .venv/bin/python benchmarks/floor.py [--workdir DIR] [--repeat N] [--markdown]

The two ways run in turn, N pairs (default 7); the ratio is the median over pairs of
(two processes / one process), so a slow spell of the shared machine hits both of a pair.
The breakdown comes from one more in-process run under cProfile (wall seconds of the main
thread): start (`python -c pass`), imports, read (decoding, and waiting for the reader and
writer threads), write (what the main thread writes: parquet, JSON), fsync, and compute
(the rest: fit, evaluation, prediction, the claims).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import run  # benchmarks/run.py: the data and the measurement of a whole process

#: The pipelines' one BLAS solve runs on one thread in `taxi-job` (job.cli.main sets it);
#: the in-process floor gets the same, set before numpy loads.
ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}

ONE_PROCESS = """
import json, sys
from job.cli import cli
for args in sys.argv[1:3]:
    try:
        cli.main(json.loads(args), standalone_mode=False)
    except SystemExit as exit_:
        assert not exit_.code, exit_
"""


def commands(data: dict[str, Path], artifacts: Path) -> tuple[list[str], list[str]]:
    train = ["train", "--train-data", str(data[run.TRAIN]), "--eval-data", str(data[run.EVAL])]
    infer = ["infer", "--input", str(data[run.INFER])]
    common = ["--artifacts", str(artifacts), "--output-format", "json", "-q"]
    return [*train, *common], [*infer, *common]


def two_processes(train: list[str], infer: list[str], cwd: Path) -> tuple[float, float]:
    first = run.measure([run.TAXI_JOB, *train], cwd, ENV)
    second = run.measure([run.TAXI_JOB, *infer], cwd, ENV)
    return first.seconds + second.seconds, first.cpu_seconds + second.cpu_seconds


def one_process(train: list[str], infer: list[str], cwd: Path) -> tuple[float, float]:
    cmd = [sys.executable, "-c", ONE_PROCESS, json.dumps(train), json.dumps(infer)]
    done = run.measure(cmd, cwd, ENV)
    return done.seconds, done.cpu_seconds


def breakdown(train: list[str], infer: list[str], cwd: Path) -> dict[str, float]:
    """Seconds of each phase of the in-process run (a child, so imports are cold)."""
    script = f"""
import cProfile, json, pstats, sys, time
started = time.perf_counter()
from job.cli import pipeline  # what train and infer import
from job import inference, mapreduce, pipeline as training
imports = time.perf_counter() - started
profile = cProfile.Profile()
profile.enable()
exec({ONE_PROCESS!r})
profile.disable()
print(json.dumps({{"imports": imports, "stats": [
    [f, n, tt] for (f, _, n), (_, _, tt, _, _) in pstats.Stats(profile).stats.items()
]}}))
"""
    args = [sys.executable, "-c", script, json.dumps(train), json.dumps(infer)]
    out = subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True, check=True)
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    phases = {"read": 0.0, "write": 0.0, "fsync": 0.0, "compute": 0.0}
    for filename, name, seconds in measured["stats"]:
        if "fsync" in name or "fdatasync" in name:
            phases["fsync"] += seconds
        elif "write" in name or "dump" in name or ("close" in name and "pyarrow" in filename):
            phases["write"] += seconds
        elif (
            "acquire" in name  # waiting for the reader thread
            or "reading.py" in filename
            or ("pyarrow" in filename and ("read" in name or "batch" in name))
        ):
            phases["read"] += seconds
        else:
            phases["compute"] += seconds
    start = statistics.median(
        run.measure([sys.executable, "-c", "pass"], cwd, ENV).seconds for _ in range(5)
    )
    return {"start": start, "imports": measured["imports"], **phases}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=run.HERE / "out")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    workdir = args.workdir
    data = run.data_for(1, workdir)
    cwd = workdir / "x1"
    artifacts = cwd / "floor-artifacts"
    train, infer = commands(data, artifacts)
    pairs: list[tuple[tuple[float, float], tuple[float, float]]] = []
    for k in range(args.repeat):
        order = [two_processes, one_process] if k % 2 == 0 else [one_process, two_processes]
        timed = {}
        for way in order:
            shutil.rmtree(artifacts, ignore_errors=True)
            timed[way] = way(train, infer, cwd)
        pairs.append((timed[two_processes], timed[one_process]))
        run.log(f"pair {k + 1}: two processes {pairs[-1][0][0]:.2f} s, one {pairs[-1][1][0]:.2f} s")
    shutil.rmtree(artifacts, ignore_errors=True)
    phases = breakdown(train, infer, cwd)
    shutil.rmtree(artifacts, ignore_errors=True)
    wall = statistics.median(a[0] / b[0] for a, b in pairs)
    cpu = statistics.median(a[1] / b[1] for a, b in pairs)
    rows = [
        ["two processes / one: wall (median of pairs)", f"{wall:.2f}×", "≤ 1.5×"],
        ["two processes / one: CPU (median of pairs)", f"{cpu:.2f}×", ""],
        ["two processes: wall s (median)", f"{statistics.median(a[0] for a, _ in pairs):.2f}", ""],
        ["one process: wall s (median)", f"{statistics.median(b[0] for _, b in pairs):.2f}", ""],
        *[[f"one process, {name} s", f"{seconds:.3f}", ""] for name, seconds in phases.items()],
    ]
    print(run.render(["measure", "value", "target"], rows, args.markdown))
    print(f"\n- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, pairs: {args.repeat}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
