"""What pushing the metrics costs a run: whole ``taxi-job`` processes with and without
``--pushgateway`` against a real Pushgateway on loopback (Debian's
``prometheus-pushgateway``), in pairs, alternating which goes first.

    .venv/bin/python benchmarks/monitoring.py [--repeat N] [--rows N] [--markdown]

Two runs: ``infer`` with nothing new to predict (the every-minute case, where a few
milliseconds are the whole run) and ``train`` on two small months. The cost is the median
of the pairwise differences (with − without); target: under 50 ms. The exit status is 0
unless something crashed: the machine is shared and the numbers are for people.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent
TAXI_JOB = str(BIN / "taxi-job")
TARGET_MS = 50.0


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_pushgateway(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("prometheus-pushgateway")
    if binary is None:
        raise SystemExit("prometheus-pushgateway is not installed (.ci/setup-tools)")
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            f"--web.listen-address=127.0.0.1:{port}",
            f"--persistence.file={workdir / 'pushgateway.data'}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=1):
                return process, url
        except OSError:
            time.sleep(0.05)
    raise SystemExit("the Pushgateway did not start")


def timed(args: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run([TAXI_JOB, *args, "-q"], check=True, capture_output=True)
    return time.perf_counter() - started


def pairs(args: list[str], url: str, repeat: int) -> tuple[list[float], list[float]]:
    """Seconds without and with the push, ``repeat`` pairs, alternating which goes first."""
    without, with_push = [], []
    timed(args), timed([*args, "--pushgateway", url])  # warm-up: page cache, .pyc files
    for round_ in range(repeat):
        order = (False, True) if round_ % 2 == 0 else (True, False)
        for push in order:
            seconds = timed([*args, "--pushgateway", url] if push else args)
            (with_push if push else without).append(seconds)
    return without, with_push


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=15, help="pairs per run (default 15)")
    parser.add_argument("--rows", type=int, default=20_000, help="rows per month (default 20000)")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    options = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="taxi-job-bench-push-") as tmp:
        work = Path(tmp)
        data, incoming, artifacts = work / "data", work / "incoming", work / "artifacts"
        for month, folder in (("2021-01", data), ("2021-02", data), ("2021-03", incoming)):
            subprocess.run(
                [TAXI_JOB, "sample-data", "--month", month, "--rows", str(options.rows),
                 str(folder), "-q"],
                check=True, capture_output=True,
            )  # fmt: skip
        train = [
            "train",
            "--train-data", str(data / "yellow_tripdata_2021-01.parquet"),
            "--eval-data", str(data / "yellow_tripdata_2021-02.parquet"),
            "--artifacts", str(artifacts),
            "--keep-versions", "2",
        ]  # fmt: skip
        infer = ["infer", "--input", str(incoming), "--artifacts", str(artifacts)]
        subprocess.run([TAXI_JOB, *train, "-q"], check=True, capture_output=True)
        subprocess.run([TAXI_JOB, *infer, "-q"], check=True, capture_output=True)
        process, url = start_pushgateway(work)
        try:
            rows = []
            for name, args in (("infer, nothing new", infer), ("train, 2 small months", train)):
                log(f"{name}: {options.repeat} pairs")
                without, with_push = pairs(args, url, options.repeat)
                cost = statistics.median(w - o for o, w in zip(without, with_push, strict=True))
                base = statistics.median(without)
                rows.append(
                    [
                        name,
                        f"{base * 1000:.0f} ms",
                        f"{statistics.median(with_push) * 1000:.0f} ms",
                        f"{cost * 1000:+.1f} ms",
                        f"{(base + cost) / base:.3f}x",
                        "ok" if cost * 1000 < TARGET_MS else "MISSED",
                    ]
                )
        finally:
            process.terminate()
            process.wait()
    header = ["run", "without", "with push", "push cost (median of pairs)", "ratio", "< 50 ms"]
    if options.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in rows:
            print("| " + " | ".join(row) + " |")
    else:
        for row in [header, *rows]:
            print("  ".join(cell.ljust(28 if i == 3 else 22) for i, cell in enumerate(row)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
