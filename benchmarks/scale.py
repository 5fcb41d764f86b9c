"""Benchmark the sharded training: a year of synthetic trips trained in one process and as
N shards running side by side (``taxi-job train --shards N --shard-index I``), as whole
processes, on the same files.

    .venv/bin/python benchmarks/scale.py [--shards 2] [--repeat 3] [--workdir DIR] [--markdown]

Reports rows per second, the speed-up of N shards over one process, each shard's peak RSS
against a one-month training's, and the reduce's share of the sharded wall time, with the
targets next to them ("MISSED" when missed), and checks that both give the same model.
The exit status is 0 unless something crashed: the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from run import (
    HERE,
    TAXI_JOB,
    Run,
    context,
    log,
    measure,
    month_file,
    print_context,
    render,
    verdict,
)

#: Rows of the TLC's yellow-taxi files of 2021 (the training year) and of 2022-01 (the
#: evaluation month after it): about 31 million rows in all.
YEAR = {
    "2021-01": 1_369_769, "2021-02": 1_371_709, "2021-03": 1_925_152, "2021-04": 2_171_187,
    "2021-05": 2_507_109, "2021-06": 2_834_264, "2021-07": 2_821_746, "2021-08": 2_788_757,
    "2021-09": 2_963_793, "2021-10": 3_463_504, "2021-11": 3_472_949, "2021-12": 3_214_369,
}  # fmt: skip
EVAL = ("2022-01", 2_463_931)

TARGET_SPEEDUP = 1.6
TARGET_RSS_RATIO = 1.3
TARGET_REDUCE_SHARE = 0.05


def year_data(workdir: Path) -> Path:
    """The folder of the year and the evaluation month (:func:`run.month_file`)."""
    folder = workdir / "year"
    for month, rows in [*YEAR.items(), EVAL]:
        month_file(folder, month, rows)
    return folder


def train_cmd(train: str, evaluation: Path, artifacts: Path, *extra: str) -> list[str]:
    return [TAXI_JOB, "train", "--train-data", train, "--eval-data", str(evaluation),
            "--artifacts", str(artifacts), "--output-format", "json", "-q", *extra]  # fmt: skip


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def sharded(train: str, evaluation: Path, artifacts: Path, shards: int, run_id: str):
    """All shards started together, each a measured process; the wall time until the last."""
    runs: list[Run | BaseException] = [RuntimeError("not run")] * shards

    def one(index: int) -> None:
        try:
            extra = ["--shards", str(shards), "--shard-index", str(index), "--run-id", run_id]
            runs[index] = measure(train_cmd(train, evaluation, artifacts, *extra), HERE)
        except BaseException as exc:  # noqa: BLE001 - raised again below
            runs[index] = exc

    threads = [threading.Thread(target=one, args=(k,)) for k in range(shards)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    for run in runs:
        if isinstance(run, BaseException):
            raise run
    return wall, runs


def predictions(artifacts: Path) -> np.ndarray:
    sys.path.insert(0, str(HERE.parent))
    from job import artifacts as store

    zones = np.arange(-1, 270)
    pu, do = (g.ravel() for g in np.meshgrid(zones, zones))
    return store.load(artifacts).model.predict(pu, do)  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, default=2, help="processes side by side (2)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; medians (3)")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=HERE / "out",
        help="data and outputs; generated data is reused (benchmarks/out)",
    )
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = parser.parse_args(argv)
    if args.shards < 2 or args.repeat < 1:
        parser.error("--shards at least 2, --repeat at least 1")
    workdir = args.workdir.resolve() / "scale"
    folder = year_data(workdir)
    train = str(folder / "yellow_tripdata_2021-*.parquet")
    evaluation = folder / f"yellow_tripdata_{EVAL[0]}.parquet"
    rows = sum(YEAR.values()) + EVAL[1]

    ctx = context()
    started = time.time()
    month: list[Run] = []
    single: list[Run] = []
    walls: list[float] = []
    shard_runs: list[list[Run]] = []
    for k in range(args.repeat):  # interleaved, so a burst of load hits all three
        log(f"round {k + 1}/{args.repeat}")
        month.append(measure(train_cmd(str(folder / "yellow_tripdata_2021-01.parquet"),
                                       folder / "yellow_tripdata_2021-02.parquet",
                                       fresh(workdir / "a-month")), HERE))  # fmt: skip
        single.append(measure(train_cmd(train, evaluation, fresh(workdir / "a-one")), HERE))
        wall, runs = sharded(train, evaluation, fresh(workdir / "a-shards"), args.shards,
                             f"bench-{k}")  # fmt: skip
        walls.append(wall)
        shard_runs.append(runs)
    ctx.append(("load average after", " ".join(f"{x:.2f}" for x in os.getloadavg())))
    ctx.append(("benchmark took", f"{time.time() - started:.0f} s"))

    one_s = statistics.median(r.seconds for r in single)
    wall_s = statistics.median(walls)
    # The ratio within each round (the runs of a round are next to each other in time,
    # so share the machine's load best), then the median over the rounds.
    ratios = [r.seconds / w for r, w in zip(single, walls, strict=True)]
    speedup = statistics.median(ratios)
    one_cpu = statistics.median(r.cpu_seconds for r in single)
    shards_cpu = statistics.median(sum(r.cpu_seconds for r in runs) for runs in shard_runs)
    month_rss = max(r.max_rss_kib for r in month) / 1024
    shard_rss = max(r.max_rss_kib for runs in shard_runs for r in runs) / 1024
    one_rss = max(r.max_rss_kib for r in single) / 1024
    reducers = [r for runs in shard_runs for r in runs if r.summary.get("model_version")]
    assert len(reducers) == args.repeat, "each sharded run publishes exactly once"
    reduce_s = statistics.median(r.summary["reduce_seconds"] for r in reducers)
    share = statistics.median(
        r.summary["reduce_seconds"] / w for r, w in zip(reducers, walls, strict=True)
    )
    reference, got = predictions(workdir / "a-one"), predictions(workdir / "a-shards")
    diff = float(np.max(np.abs(reference - got)))
    rmse = [single[-1].summary["rmse_eval"], reducers[-1].summary["rmse_eval"]]

    n = args.shards
    cores = len(os.sched_getaffinity(0))
    table = [
        ["rows (12 months + eval month)", f"{rows:,}", ""],
        ["one process: s, rows/s", f"{one_s:.2f} s, {rows / one_s / 1e6:.1f} M/s", ""],
        [f"{n} shards side by side: s, rows/s", f"{wall_s:.2f} s, {rows / wall_s / 1e6:.1f} M/s",
         ""],
        [f"speed-up, {n} shards / one process (median of rounds)", f"{speedup:.2f}×",
         f"≥ {TARGET_SPEEDUP}× {verdict(speedup >= TARGET_SPEEDUP)}"],
        ["speed-up in each round", ", ".join(f"{x:.2f}×" for x in ratios), ""],
        [f"CPU s: one process / {n} shards in all", f"{one_cpu:.2f} / {shards_cpu:.2f} s", ""],
        ["cores one process keeps busy (CPU s / s)", f"{one_cpu / one_s:.2f}", ""],
        [f"shards' CPU s / {min(cores, n)}: their wall time on idle cores, at best",
         f"{shards_cpu / min(cores, n):.2f} s", ""],
        ["efficiency: one process's CPU s / the shards'", f"{one_cpu / shards_cpu:.0%}", ""],
        ["peak RSS: one month / a year in one process", f"{month_rss:.0f} / {one_rss:.0f} MiB", ""],
        ["peak RSS of a shard / one month", f"{shard_rss:.0f} MiB, {shard_rss / month_rss:.2f}×",
         f"≤ {TARGET_RSS_RATIO}× {verdict(shard_rss / month_rss <= TARGET_RSS_RATIO)}"],
        ["reduce (merge, fit, score, publish): s, share", f"{reduce_s:.3f} s, {share:.1%}",
         f"< {TARGET_REDUCE_SHARE:.0%} {verdict(share < TARGET_REDUCE_SHARE)}"],
        ["max |prediction difference|, sharded vs one", f"{diff:.1e} min",
         f"≤ 1e-9 {verdict(diff <= 1e-9)}"],
        ["RMSE eval, one process / sharded", f"{rmse[0]:.9f} / {rmse[1]:.9f}", ""],
    ]  # fmt: skip
    command = print_context("benchmarks/scale.py", argv, ctx, args.markdown)
    print(render(["", "measured", "target"], table, args.markdown))
    print()
    samples = ", ".join(f"{r.seconds:.2f}" for r in single)
    print(f"samples (s): one process [{samples}]; {n} shards "
          f"[{', '.join(f'{w:.2f}' for w in walls)}]")  # fmt: skip
    raw: dict[str, Any] = {
        "command": command, "context": dict(ctx),
        "one_process": [vars(r) for r in single], "month": [vars(r) for r in month],
        "sharded": [{"wall": w, "shards": [vars(r) for r in runs]}
                    for w, runs in zip(walls, shard_runs, strict=True)],
    }  # fmt: skip
    (workdir / "results.json").write_text(json.dumps(raw, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
