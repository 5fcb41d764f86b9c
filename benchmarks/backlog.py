"""Benchmark a backlog of small inputs: N files of 100 trips in one queue, the first run that
predicts them all (files per second) and a run with nothing new over them (the every-minute
``infer`` once the backlog is drained), as whole processes.

    .venv/bin/python benchmarks/backlog.py [--sizes 1000 5000 20000] [--baseline REF]
        [--baseline-sizes 1000 5000] [--repeat 3] [--months 20] [--month-budget 5]
        [--workdir DIR] [--markdown]

With ``--baseline``, that commit's taxi-job does the same on its own copy of the files,
each of its runs paired with one of today's (alternating which goes first); the ratios are
today's time over the baseline's. Targets: a run with nothing new over 5,000 predicted
files within 2 s, and nearly flat in their number.

Then (``--months``, 0 for none) a backlog of big files: that many copies of a full month
(the real row count of 2021-03), predicted by one run without a budget, and drained again
by runs with ``--budget-seconds`` (``--month-budget``): how long each run took, against
the budget plus the one input a run may still be predicting when the budget runs out.

The exit status is 0 unless something crashed: the machine may be shared.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
from pathlib import Path

import pyarrow.parquet as pq
from run import (
    MONTHS,
    TAXI_JOB,
    Baseline,
    Run,
    context,
    log,
    measure,
    month_file,
    print_context,
    render,
)

#: Rows of each input: an hourly feed of a small zone, or a test drop.
ROWS = 100
#: A run with nothing new over this many predicted files must take at most this long.
NOOP_FILES, NOOP_TARGET_S = 5000, 2.0


def queue_of(workdir: Path, files: int, sample: Path) -> Path:
    """``files`` copies (each its own inode and times) of a ``ROWS``-trip file."""
    folder = workdir / f"incoming-{files}"
    if folder.is_dir() and len(os.listdir(folder)) == files:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    first = folder / "trips-00000.parquet"
    pq.write_table(pq.read_table(sample).slice(0, ROWS), first)
    for i in range(1, files):
        shutil.copyfile(first, folder / f"trips-{i:05d}.parquet")
    return folder


def infer(queue: Path, artifacts: Path, predictions: Path, *extra: str) -> list[str]:
    return [TAXI_JOB, "infer", "--input", f"{queue}/*.parquet", "--artifacts", str(artifacts),
            "--predictions", str(predictions), "--output-format", "json", "-q",
            *extra]  # fmt: skip


def month_queue(workdir: Path, files: int) -> Path:
    """``files`` copies of a synthetic month of the real row count of 2021-03."""
    month, rows = list(MONTHS.items())[-1]
    folder = workdir / f"months-{files}"
    if folder.is_dir() and len(os.listdir(folder)) == files:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    source = month_file(workdir / "months", month, rows)
    for i in range(files):
        shutil.copyfile(source, folder / f"month-{i:02d}.parquet")
    return folder


def bench_months(
    workdir: Path, files: int, budget_s: float, env: dict[str, str], markdown: bool
) -> str:
    """One run over ``files`` full months, then runs with a budget until none waits: a
    table of each run, and the bound a budgeted run must keep."""
    queue = month_queue(workdir / "data", files)
    artifacts = workdir / "artifacts-today"
    predictions = workdir / f"predictions-months-{files}"
    shutil.rmtree(predictions, ignore_errors=True)
    whole = measure(infer(queue, artifacts, predictions), workdir, env)
    assert whole.summary["inputs_predicted"] == files, whole.summary
    rows = whole.summary["rows_predicted"]
    per_file = whole.seconds / files
    log(f"{files} months, one run: {whole.seconds:.1f} s")
    table = [["one run, no budget", f"{whole.seconds:.1f}", str(files), "0",
              f"{rows / whole.seconds / 1e6:.1f}", f"{whole.max_rss_kib / 1024:.0f}"]]  # fmt: skip
    shutil.rmtree(predictions, ignore_errors=True)
    budgeted: list[Run] = []
    while not budgeted or budgeted[-1].summary["inputs_waiting"] > 0:
        assert len(budgeted) < files, "a budgeted run predicted nothing"
        run = measure(
            infer(queue, artifacts, predictions, "--budget-seconds", f"{budget_s:g}"),
            workdir, env,
        )  # fmt: skip
        budgeted.append(run)
        s = run.summary
        log(f"{files} months, budget {budget_s:g} s: run {len(budgeted)} {run.seconds:.1f} s")
        table.append([f"budget {budget_s:g} s: run {len(budgeted)}", f"{run.seconds:.1f}",
                      str(s["inputs_predicted"]), str(s["inputs_waiting"]),
                      f"{s['rows_predicted'] / run.seconds / 1e6:.1f}",
                      f"{run.max_rss_kib / 1024:.0f}"])  # fmt: skip
    assert sum(r.summary["inputs_predicted"] for r in budgeted) == files
    longest = max(r.seconds for r in budgeted)
    # A run starts no input once its budget is spent, but finishes the one it is at; plus
    # the process's start and end (the no-op run's time).
    bound = budget_s + per_file
    header = ["run", "s", "inputs predicted", "inputs waiting", "M rows/s", "MiB"]
    verdict = "ok" if longest <= bound + 1.0 else "MISSED"
    return (
        f"{files} files of {rows // files:,} rows each\n\n{render(header, table, markdown)}\n\n"
        f"longest budgeted run {longest:.1f} s; budget {budget_s:g} s + one month "
        f"({per_file:.1f} s) + 1 s to start and end: {verdict}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[1000, 5000, 20000])
    parser.add_argument("--baseline", default=None, metavar="REF")
    parser.add_argument("--baseline-sizes", type=int, nargs="*", default=None,
                        help="sizes the baseline runs too [default: all]")  # fmt: skip
    parser.add_argument("--repeat", type=int, default=3, help="runs with nothing new, each")
    parser.add_argument("--months", type=int, default=20, help="full months; 0: none")
    parser.add_argument("--month-budget", type=float, default=5.0, metavar="SECONDS")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/taxi-job-bench-backlog"))
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    workdir: Path = args.workdir.absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = context()
    # Files taken as copied in at once: the wait for files still being copied is not measured.
    env = {**os.environ, "TAXI_JOB_SETTLE_SECONDS": "0"}
    baseline = Baseline.extract(args.baseline, workdir) if args.baseline else None
    who: dict[str, dict[str, str]] = {"today": env}
    if baseline is not None:
        who[baseline.ref] = {**baseline.env, "TAXI_JOB_SETTLE_SECONDS": "0"}
    data = workdir / "data"
    train = month_file(data, "2021-01", 20_000)
    for name, child_env in who.items():
        artifacts = workdir / f"artifacts-{name.split()[0]}"
        if not (artifacts / "CURRENT").exists():
            measure([TAXI_JOB, "train", "--train-data", str(train), "--eval-data", str(train),
                     "--artifacts", str(artifacts), "--output-format", "json", "-q"],
                    workdir, child_env)  # fmt: skip
    rows: list[list[str]] = []
    noop_at_target = float("nan")
    for size, files in enumerate(args.sizes):
        queue = queue_of(data, files, train)
        runs: dict[str, tuple[Run, list[Run]]] = {}
        names = [n for n in who if n == "today" or args.baseline_sizes is None
                 or files in args.baseline_sizes]  # fmt: skip
        # One first run each, in turn going first: a slow spell of the shared machine
        # (and the write-back of the files just made) does not always hit the same code.
        for name in names if size % 2 else names[::-1]:
            predictions = workdir / f"predictions-{name.split()[0]}-{files}"
            shutil.rmtree(predictions, ignore_errors=True)
            artifacts = workdir / f"artifacts-{name.split()[0]}"
            first = measure(infer(queue, artifacts, predictions), workdir, who[name])
            assert first.summary["inputs_predicted"] == files, first.summary
            log(f"{files} files, {name}: first run {first.seconds:.1f} s")
            runs[name] = (first, [])
        for i in range(args.repeat):
            order = names if i % 2 == 0 else names[::-1]  # a slow spell hits both of a pair
            for name in order:
                predictions = workdir / f"predictions-{name.split()[0]}-{files}"
                artifacts = workdir / f"artifacts-{name.split()[0]}"
                noop = measure(infer(queue, artifacts, predictions), workdir, who[name])
                assert noop.summary["inputs_predicted"] == 0, noop.summary
                runs[name][1].append(noop)
        for name in names:
            first, noops = runs[name]
            median = statistics.median(r.seconds for r in noops)
            if name == "today" and files == NOOP_FILES:
                noop_at_target = median
            ratio = ""
            if name != "today":
                today_first, today_noops = runs["today"]
                pairs = [a.seconds / b.seconds for a, b in zip(today_noops, noops, strict=True)]
                ratio = f"first {today_first.seconds / first.seconds:.2f}×, no-op " + (
                    f"{statistics.median(pairs):.2f}×"
                )
            rows.append([f"{files:,}", name, f"{first.seconds:.1f}", f"{files / first.seconds:.0f}",
                         f"{median:.2f}", f"{max(r.max_rss_kib for r in noops) / 1024:.0f}",
                         ratio])  # fmt: skip
            log(f"{files} files, {name}: no-op median {median:.2f} s")
    print_context("benchmarks/backlog.py", argv, ctx, args.markdown)
    header = ["files", "code", "first run s", "files/s", "no-op s (median)", "no-op MiB",
              "today / baseline"]  # fmt: skip
    if rows:
        print(render(header, rows, args.markdown))
    if NOOP_FILES in args.sizes:
        ok = noop_at_target <= NOOP_TARGET_S
        print(f"\nno-op over {NOOP_FILES:,} predicted files: {noop_at_target:.2f} s "
              f"(target ≤ {NOOP_TARGET_S:.0f} s): {'ok' if ok else 'MISSED'}")  # fmt: skip
    if args.months:
        print("\n" + bench_months(workdir, args.months, args.month_budget, env, args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
