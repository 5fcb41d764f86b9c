"""Benchmark taxi-job against the textbook pipeline (benchmarks/textbook.py), whole processes
side by side on the same synthetic months, at the real 2021 row counts and at multiples.

    .venv/bin/python benchmarks/run.py [--scales 1,4] [--workdir DIR] [--repeat N]
                                       [--quick] [--markdown]

Measures wall time and peak RSS (GNU time's %M) of each process, and
compares the RMSE on the evaluation month and the predictions. Targets are printed next
to the numbers ("MISSED" when missed); the exit status is 0 unless something crashed,
because the machine is shared and the numbers are for people.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
TAXI_JOB = str(BIN / "taxi-job")
TEXTBOOK = [sys.executable, str(HERE / "textbook.py")]

#: Rows of the TLC's yellow-taxi 2021 files: train, eval, inference.
MONTHS = {"2021-01": 1_369_769, "2021-02": 1_371_709, "2021-03": 1_925_152}
TRAIN, EVAL, INFER = MONTHS

TARGET_TRAIN_SPEEDUP = 50.0
TARGET_INFER_SPEEDUP = 20.0
TARGET_RSS_GROWTH = 1.3
TARGET_GATE_COST = 0.10
#: What the current code may cost more than the ``--baseline`` commit, per step.
TARGET_BASELINE_COST = 0.10
ENV_VARS = (
    "OPENBLAS_CORETYPE",
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OMP_THREAD_LIMIT",
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Run:
    """One finished child process."""

    seconds: float
    max_rss_kib: int
    summary: dict[str, Any]
    cpu_seconds: float = float("nan")
    """User plus system CPU time (GNU time's %U + %S; NaN without it)."""


@dataclass
class Runs:
    """Every run of one pipeline step at one scale."""

    runs: list[Run] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return statistics.median(r.seconds for r in self.runs)

    @property
    def rss_mib(self) -> float:
        return max(r.max_rss_kib for r in self.runs) / 1024

    @property
    def summary(self) -> dict[str, Any]:
        return self.runs[-1].summary

    def samples(self) -> str:
        return ", ".join(f"{r.seconds:.2f}" for r in self.runs)


#: GNU time reports the peak RSS of the command alone. A child's ru_maxrss from wait4 would
#: not: Linux carries the parent's RSS high-water mark over into the child at exec, so
#: this script's own memory (hundreds of MiB after comparing predictions) would show up
#: as the child's.
GNU_TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None


def measure(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> Run:
    """Run ``cmd`` to completion; its wall time, peak RSS and the JSON on its last stdout line."""
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.NamedTemporaryFile("r") as rss,
    ):
        wrapped = [GNU_TIME, "-f", "%U %S %M", "-o", rss.name, *cmd] if GNU_TIME else cmd
        started = time.perf_counter()
        proc = subprocess.Popen(wrapped, cwd=cwd, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
        # GNU time's last line: user s, system s, peak RSS KiB.
        fields = rss.read().split()[-3:] if GNU_TIME and proc.returncode == 0 else []
        peak_kib = int(fields[2]) if fields else 0
        cpu = float(fields[0]) + float(fields[1]) if fields else usage.ru_utime + usage.ru_stime
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} exited {proc.returncode}\n{stderr[-4000:]}{stdout[-2000:]}"
        )
    lines = stdout.strip().splitlines()
    return Run(seconds, peak_kib or usage.ru_maxrss, json.loads(lines[-1]) if lines else {}, cpu)


def month_file(folder: Path, month: str, rows: int) -> Path:
    """``folder``'s synthetic file of ``month`` with ``rows`` trips: generated with the
    project's CLI once, and reused while its row count matches."""
    path = folder / f"yellow_tripdata_{month}.parquet"
    try:
        have = pq.read_metadata(path).num_rows
    except (OSError, ValueError):
        have = None
    if have != rows:
        log(f"generating {path} ({rows:,} rows)")
        subprocess.run(
            [TAXI_JOB, "sample-data", "--month", month, "--rows", str(rows), str(folder), "-q"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return path


def data_for(scale: int, workdir: Path) -> dict[str, Path]:
    """The three months at ``scale`` times the real row counts."""
    folder = workdir / f"x{scale}" / "data"
    return {month: month_file(folder, month, rows * scale) for month, rows in MONTHS.items()}


def interleave(fast: int, slow: int) -> list[str]:
    """An order of ``fast`` taxi-job runs and ``slow`` textbook runs that spreads the slow
    ones among the fast ones, so a burst of load on the shared machine hits both."""
    order = ["taxi-job"] * fast
    for k in reversed(range(slow)):
        order.insert(round((k + 0.5) * fast / slow), "textbook")
    return order


@dataclass
class Scale:
    scale: int
    rows: dict[str, int]
    train_tb: Runs = field(default_factory=Runs)
    train_tj: Runs = field(default_factory=Runs)
    #: taxi-job trainings with a current model to score: the promotion gate at work.
    train_gate: Runs = field(default_factory=Runs)
    infer_tb: Runs = field(default_factory=Runs)
    infer_tj: Runs = field(default_factory=Runs)
    max_abs_diff: float = float("nan")
    mean_abs_diff: float = float("nan")
    #: With ``--baseline``: that commit's taxi-job, each run paired with one of today's.
    train_base: Runs = field(default_factory=Runs)
    infer_base: Runs = field(default_factory=Runs)


@dataclass(frozen=True)
class Baseline:
    """An older commit's taxi-job, to measure what a change costs: its ``job`` package
    extracted into a folder that goes first on ``PYTHONPATH`` (the same virtual environment,
    the same libraries; the children run outside the repository, so the checkout's own
    ``job`` is not on their path)."""

    ref: str
    env: dict[str, str]

    @classmethod
    def extract(cls, ref: str, workdir: Path) -> Baseline:
        repo = HERE.parent
        sha = subprocess.run(
            ["git", "rev-parse", "--verify", f"{ref}^{{commit}}"],
            cwd=repo, check=True, capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
        folder = workdir / f"baseline-{sha[:12]}"
        if not (folder / "job" / "__init__.py").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            archive = subprocess.run(
                ["git", "archive", sha, "job"], cwd=repo, check=True, capture_output=True
            ).stdout
            subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
        env = {**os.environ, "PYTHONPATH": str(folder)}
        return cls(ref if sha.startswith(ref) else f"{ref} ({sha[:7]})", env)


def paired_cost(runs: Runs, base: Runs) -> float:
    """The median over pairs of (run / baseline run) - 1: a pair ran back to back, so a
    slow spell of the shared machine hits both of it."""
    return (
        statistics.median(a.seconds / b.seconds for a, b in zip(runs.runs, base.runs, strict=True))
        - 1
    )


def bench_scale(
    scale: int, workdir: Path, repeat: int, textbook_runs: int, baseline: Baseline | None = None
) -> Scale:
    data = data_for(scale, workdir)
    base = workdir / f"x{scale}"
    tj_dir, tb_dir = base / "taxi-job", base / "textbook"
    result = Scale(scale, {m: n * scale for m, n in MONTHS.items()})
    cwd = base
    train_tj = [
        TAXI_JOB,
        "train",
        "--train-data",
        str(data[TRAIN]),
        "--eval-data",
        str(data[EVAL]),
        "--artifacts",
        str(tj_dir),
        "--output-format",
        "json",
        "-q",
    ]
    train_tb = [*TEXTBOOK, "train", str(data[TRAIN]), str(data[EVAL]), str(tb_dir)]
    infer_tj = [
        TAXI_JOB,
        "infer",
        "--input",
        str(data[INFER]),
        "--artifacts",
        str(tj_dir),
        "--force",
        "--output-format",
        "json",
        "-q",
    ]
    infer_tb = [*TEXTBOOK, "infer", str(data[INFER]), str(tb_dir)]

    # The promotion gate: trainings into a folder that has a current model, which each one
    # loads, verifies and scores (next to the fresh ones, which have none to score).
    gate_dir = base / "taxi-job-gate"
    shutil.rmtree(gate_dir, ignore_errors=True)
    train_gate = [str(gate_dir) if arg == str(tj_dir) else arg for arg in train_tj]
    measure(train_gate, cwd)
    # The baseline trains and predicts in a folder of its own (its model format may differ).
    base_dir = base / "baseline"
    train_base = [str(base_dir) if arg == str(tj_dir) else arg for arg in train_tj]
    infer_base = [str(base_dir) if arg == str(tj_dir) else arg for arg in infer_tj]
    for who in interleave(repeat, textbook_runs):
        if who == "taxi-job":
            # A fresh artifacts folder each time: every run does the same work. The gated
            # run goes first every other time, so neither gets the warmer cache always.
            gate_first = len(result.train_gate.runs) % 2 == 1
            if gate_first:
                result.train_gate.runs.append(gated := measure(train_gate, cwd))
            if baseline is not None and gate_first:  # the baseline's pair, in either order
                shutil.rmtree(base_dir, ignore_errors=True)
                result.train_base.runs.append(old := measure(train_base, cwd, baseline.env))
                log(f"{scale}x train {baseline.ref}: {old.seconds:.2f} s")
            shutil.rmtree(tj_dir, ignore_errors=True)
            result.train_tj.runs.append(run := measure(train_tj, cwd))
            if not gate_first:
                result.train_gate.runs.append(gated := measure(train_gate, cwd))
            if gated.summary.get("champion_version") is None:
                raise RuntimeError(f"{scale}x: the gated training had no champion to score")
            log(f"{scale}x train taxi-job with the gate: {gated.seconds:.2f} s")
            if baseline is not None and not gate_first:
                shutil.rmtree(base_dir, ignore_errors=True)
                result.train_base.runs.append(old := measure(train_base, cwd, baseline.env))
                log(f"{scale}x train {baseline.ref}: {old.seconds:.2f} s")
        else:
            shutil.rmtree(tb_dir, ignore_errors=True)
            result.train_tb.runs.append(run := measure(train_tb, cwd))
        log(f"{scale}x train {who}: {run.seconds:.2f} s, {run.max_rss_kib / 1024:.0f} MiB")
    for who in interleave(repeat, textbook_runs):
        runs, cmd = (
            (result.infer_tj, infer_tj) if who == "taxi-job" else (result.infer_tb, infer_tb)
        )
        base_first = len(runs.runs) % 2 == 1
        if who == "taxi-job" and baseline is not None and base_first:
            result.infer_base.runs.append(old := measure(infer_base, cwd, baseline.env))
            log(f"{scale}x infer {baseline.ref}: {old.seconds:.2f} s")
        runs.runs.append(run := measure(cmd, cwd))
        log(f"{scale}x infer {who}: {run.seconds:.2f} s, {run.max_rss_kib / 1024:.0f} MiB")
        if who == "taxi-job" and baseline is not None and not base_first:
            result.infer_base.runs.append(old := measure(infer_base, cwd, baseline.env))
            log(f"{scale}x infer {baseline.ref}: {old.seconds:.2f} s")

    # Same rows, same order, predictions close: the two jobs did the same thing.
    name = data[INFER].name
    # taxi-job files predictions under the input's folder (predictions/<folder>/<name>).
    (output,) = (tj_dir / "predictions").rglob(name)
    mine = pq.read_table(output, columns=["row", "predicted_duration"])
    theirs = pq.read_table(tb_dir / "predictions" / name, columns=["row", "predicted_duration"])
    if mine.num_rows != theirs.num_rows or mine["row"] != theirs["row"]:
        raise RuntimeError(f"{scale}x: the two prediction files do not have the same rows")
    diff = np.abs(mine["predicted_duration"].to_numpy() - theirs["predicted_duration"].to_numpy())
    result.max_abs_diff, result.mean_abs_diff = float(diff.max()), float(diff.mean())
    return result


def context() -> list[tuple[str, str]]:
    """The machine and the BLAS/thread settings both pipelines run under."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    items = [
        ("date", time.strftime("%Y-%m-%d %H:%M %Z")),
        ("cpu", model),
        ("nproc", f"{len(os.sched_getaffinity(0))} usable of {os.cpu_count()}"),
        ("load average", " ".join(f"{x:.2f}" for x in os.getloadavg())),
        ("python", platform.python_version()),
    ]
    for var in ENV_VARS:
        value = os.environ.get(var)
        items.append((var, "not set" if value is None else f"set: {value}"))
    # Ask a child with the same environment, after importing what the pipelines import.
    probe = (
        "import json, numpy, scipy, sklearn, pandas, pyarrow\n"
        "import scipy.sparse.linalg, sklearn.linear_model\n"
        "info = {'versions': {m.__name__: m.__version__ for m in "
        "(numpy, scipy, sklearn, pandas, pyarrow)},\n"
        "        'arrow': [pyarrow.cpu_count(), pyarrow.io_thread_count()]}\n"
        "try:\n"
        "    from threadpoolctl import threadpool_info\n"
        "    info['pools'] = [f\"{p['internal_api']} {p.get('version')} \"\n"
        "                     f\"{p.get('architecture')} threads={p['num_threads']}\"\n"
        "                     for p in threadpool_info()]\n"
        "except ImportError:\n"
        "    pass\n"
        "print(json.dumps(info))\n"
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", probe], check=True, capture_output=True, text=True
        ).stdout
        info = json.loads(out)
        items.append(("versions", ", ".join(f"{k} {v}" for k, v in info["versions"].items())))
        items.append(("arrow threads", "cpu {} / io {}".format(*info["arrow"])))
        if "pools" in info:
            items.append(("threadpools", "; ".join(info["pools"]) or "none"))
        else:
            items.append(("threadpools", "threadpoolctl not installed"))
    except (subprocess.CalledProcessError, ValueError, KeyError) as exc:
        items.append(("threadpools", f"probe failed: {exc}"))
    return items


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def table(
    scales: list[Scale], repeat: int, baseline: Baseline | None = None
) -> tuple[list[str], list[list[str]]]:
    header = ["", *(f"{s.scale}×" for s in scales), "target"]
    rows: list[list[str]] = []

    def row(label: str, values: list[str], target: str = "") -> None:
        rows.append([label, *values, target])

    row(
        "rows train / eval / infer", [" / ".join(f"{n:,}" for n in s.rows.values()) for s in scales]
    )
    row("train: textbook s", [f"{s.train_tb.seconds:.1f}" for s in scales])
    row(f"train: taxi-job s (median of {repeat})", [f"{s.train_tj.seconds:.2f}" for s in scales])
    row(
        f"train: taxi-job, a champion to score s (median of {repeat})",
        [f"{s.train_gate.seconds:.2f}" for s in scales],
    )
    cost = [s.train_gate.seconds / s.train_tj.seconds - 1 for s in scales]
    row(
        "promotion gate: added to train",
        [f"{100 * x:+.1f} % {verdict(x < TARGET_GATE_COST)}" for x in cost],
        f"< {100 * TARGET_GATE_COST:.0f} %",
    )
    speed = [s.train_tb.seconds / s.train_tj.seconds for s in scales]
    row(
        "train speed-up",
        [f"{x:.1f}× {verdict(x >= TARGET_TRAIN_SPEEDUP)}" for x in speed],
        f"≥ {TARGET_TRAIN_SPEEDUP:.0f}×",
    )
    row("infer: textbook s", [f"{s.infer_tb.seconds:.1f}" for s in scales])
    row(f"infer: taxi-job s (median of {repeat})", [f"{s.infer_tj.seconds:.2f}" for s in scales])
    speed = [s.infer_tb.seconds / s.infer_tj.seconds for s in scales]
    row(
        "infer speed-up",
        [f"{x:.1f}× {verdict(x >= TARGET_INFER_SPEEDUP)}" for x in speed],
        f"≥ {TARGET_INFER_SPEEDUP:.0f}×",
    )
    if baseline is not None:
        for step in ("train", "infer"):
            row(
                f"{step}: {baseline.ref} s (median of {repeat})",
                [f"{getattr(s, f'{step}_base').seconds:.2f}" for s in scales],
            )
            cost = [
                paired_cost(getattr(s, f"{step}_tj"), getattr(s, f"{step}_base")) for s in scales
            ]
            row(
                f"{step}: added since {baseline.ref} (median of pairs)",
                [f"{100 * x:+.1f} % {verdict(x < TARGET_BASELINE_COST)}" for x in cost],
                f"< {100 * TARGET_BASELINE_COST:.0f} %",
            )
    row("train peak RSS MiB: textbook", [f"{s.train_tb.rss_mib:,.0f}" for s in scales])
    row("train peak RSS MiB: taxi-job", [f"{s.train_tj.rss_mib:,.0f}" for s in scales])
    row("infer peak RSS MiB: textbook", [f"{s.infer_tb.rss_mib:,.0f}" for s in scales])
    row("infer peak RSS MiB: taxi-job", [f"{s.infer_tj.rss_mib:,.0f}" for s in scales])
    base = next((s for s in scales if s.scale == 1), None)
    if base is not None:
        for step in ("train", "infer"):
            growth = []
            for s in scales:
                if s is base:
                    growth.append("1.00")
                    continue
                x = getattr(s, f"{step}_tj").rss_mib / getattr(base, f"{step}_tj").rss_mib
                growth.append(f"{x:.2f} {verdict(x <= TARGET_RSS_GROWTH)}")
            row(f"taxi-job {step} RSS / RSS(1×)", growth, f"≤ {TARGET_RSS_GROWTH}")
    row("RMSE eval: textbook", [f"{s.train_tb.summary['rmse_eval']:.6f}" for s in scales])
    row("RMSE eval: taxi-job", [f"{s.train_tj.summary['rmse_eval']:.6f}" for s in scales])
    diffs = [s.train_tj.summary["rmse_eval"] - s.train_tb.summary["rmse_eval"] for s in scales]
    row("RMSE eval: taxi-job − textbook", [f"{d:+.2e} {verdict(d <= 0)}" for d in diffs], "≤ 0")
    row(
        "predictions: abs(taxi-job − textbook) max / mean (min)",
        [f"{s.max_abs_diff:.3f} / {s.mean_abs_diff:.1e}" for s in scales],
    )
    return header, rows


def print_context(
    script: str, argv: list[str] | None, ctx: list[tuple[str, str]], markdown: bool
) -> str:
    """Print the command that ran and the machine's context, as a list or aligned lines;
    return the command."""
    command = f"python {script} " + " ".join(sys.argv[1:] if argv is None else argv)
    if markdown:
        print(f"Command: `{command.strip()}`\n")
        print("\n".join(f"- {k}: {v}" for k, v in ctx))
    else:
        width = max(len(k) for k, _ in ctx)
        print("\n".join(f"{k.ljust(width)}  {v}" for k, v in ctx))
    print()
    return command


def render(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = [
            "| " + " | ".join(header) + " |",
            "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
        ]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    out = []
    for r in [header, *rows]:
        cells = [r[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)
        ]
        out.append("  ".join(cells))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scales", default="1,4", help="row-count multiples (default 1,4)")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=HERE / "out",
        help="data and outputs; generated data is reused (default benchmarks/out)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=5,
        help="taxi-job runs per step; the median counts (default 5)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the textbook once per step at every scale (default twice at 1×)",
    )
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument(
        "--baseline",
        metavar="REF",
        default=None,
        help="also run this commit's taxi-job, paired run by run, and report what today's "
        "costs more",
    )
    args = parser.parse_args(argv)
    scales = [int(s) for s in args.scales.split(",") if s.strip()]
    if not scales or min(scales) < 1 or args.repeat < 1:
        parser.error("--scales takes positive integers, --repeat at least 1")
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)

    baseline = Baseline.extract(args.baseline, workdir) if args.baseline else None
    ctx = context()
    started = time.time()
    results = []
    for scale in scales:
        textbook_runs = 1 if args.quick or scale > 1 else 2
        results.append(bench_scale(scale, workdir, args.repeat, textbook_runs, baseline))
    ctx.append(("load average after", " ".join(f"{x:.2f}" for x in os.getloadavg())))
    ctx.append(("benchmark took", f"{time.time() - started:.0f} s"))

    header, rows = table(results, args.repeat, baseline)
    command = print_context("benchmarks/run.py", argv, ctx, args.markdown)
    print(render(header, rows, args.markdown))
    print()
    for s in results:
        print(
            f"{s.scale}× samples (s): train taxi-job [{s.train_tj.samples()}], "
            f"with the gate [{s.train_gate.samples()}], "
            f"textbook [{s.train_tb.samples()}]; infer taxi-job [{s.infer_tj.samples()}], "
            f"textbook [{s.infer_tb.samples()}]"
        )
        if args.markdown:
            print()
    raw = {
        "command": command,
        "context": dict(ctx),
        "scales": {
            s.scale: {
                step: [r.__dict__ for r in getattr(s, step).runs]
                for step in (
                    "train_tb",
                    "train_tj",
                    "train_gate",
                    "infer_tb",
                    "infer_tj",
                    "train_base",
                    "infer_base",
                )  # fmt: skip
            }
            for s in results
        },
    }
    (workdir / "results.json").write_text(json.dumps(raw, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
