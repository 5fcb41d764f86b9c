"""The run journal and ``taxi-job report``: what runs record on the volume, the page built
from it alone, and the page's way through a pod's log (browser checks: test_report_browser)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from reportvolume import make_volume

from job import journal
from job.cli import cli
from job.report import transport
from job.report.volume import fold_inputs, read

TAXI_JOB = str(Path(sys.executable).with_name("taxi-job"))


def run(*args: str, code: int = 0):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result


@pytest.fixture
def trained(make_trips, tmp_path: Path) -> Path:
    """A volume laid out as on the cluster: data/incoming/ beside artifacts/, one model
    trained and one input predicted, through the real commands."""
    data = tmp_path / "data"
    jan = make_trips("jan.parquet", rows=3000, seed=1, folder=data)
    feb = make_trips("feb.parquet", rows=2000, seed=2, folder=data)
    make_trips("mar.parquet", rows=1000, seed=3, folder=data / "incoming")
    root = tmp_path / "artifacts"
    run(
        "train", "--train-data", str(jan), "--eval-data", str(feb), "--artifacts", str(root),
        "--report-page",
    )  # fmt: skip
    run("infer", "--input", str(data / "incoming"), "--artifacts", str(root))
    return root


def weights(root: Path) -> dict:
    version = (root / "CURRENT").read_text().strip()
    return json.loads((root / "models" / version / "model.json").read_text())["model"]


# -- the journal ---------------------------------------------------------------------------


def test_train_and_infer_leave_their_runs_in_the_journal(trained: Path):
    runs = journal.read(trained)
    assert [r["command"] for r in runs] == ["train", "infer"]
    train, infer = runs
    assert train["exit_code"] == 0 and train["error"] is None
    assert train["summary"]["model_version"] == (trained / "CURRENT").read_text().strip()
    assert infer["summary"]["inputs_predicted"] == 1
    assert set(journal.last(trained)) == {"train", "infer"}
    # An infer with nothing left to do replaces last-infer.json only: no file of its own.
    run("infer", "--input", str(trained.parent / "data" / "incoming"), "--artifacts", str(trained))
    assert len(journal.read(trained)) == 2
    assert journal.last(trained)["infer"]["summary"]["inputs_skipped"] == 1


def test_a_failed_run_is_journaled_with_its_exit_code(tmp_path: Path):
    root = tmp_path / "artifacts"
    root.mkdir()  # the journal never creates the artifacts folder itself
    result = run(
        "train",
        "--train-data",
        str(tmp_path / "missing.parquet"),
        "--eval-data",
        str(tmp_path / "missing.parquet"),
        "--artifacts",
        str(root),
        code=2,
    )
    (failed,) = journal.read(root)
    assert failed["command"] == "train" and failed["exit_code"] == 2
    assert failed["error"] in result.output
    assert journal.last(root)["train"]["exit_code"] == 2


def test_a_journal_that_cannot_be_written_warns_and_keeps_the_exit_code(trained: Path):
    # runs/ replaced by a file: nothing can be written under it.
    for path in sorted((trained / "runs").rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    (trained / "runs").rmdir()
    (trained / "runs").write_text("not a folder")
    result = run("models", "prune", "--keep", "1", "--artifacts", str(trained))
    assert "could not write the run journal" in result.output


def test_old_days_are_compacted_and_very_old_ones_deleted(tmp_path: Path):
    root = tmp_path / "artifacts"
    root.mkdir()
    today = dt.date(2026, 12, 3)

    def at(day: dt.date, hour: int) -> str:
        return f"{day.isoformat()}T{hour:02d}:00:00Z"

    days = [today - dt.timedelta(days=n) for n in (0, 1, 5, journal.KEEP_DAYS + 3)]
    for day in reversed(days):  # oldest first, as time goes
        for hour in (1, 2):
            summary = {"model_version": "v", "inputs_predicted": 1, "hour": hour}
            stamp = at(day, hour)
            journal.record(
                root, "infer", started=stamp, finished=stamp, exit_code=0, error=None,
                summary=summary,
            )  # fmt: skip
    runs = root / "runs"
    names = sorted(p.name for p in runs.iterdir() if not p.name.startswith("last-"))
    # The last record (today) compacted what was COMPACT_AFTER_DAYS old or more.
    assert names == [f"{days[2]}.jsonl", str(days[1]), str(days[0])]
    assert len((runs / f"{days[2]}.jsonl").read_text().splitlines()) == 2
    kept = journal.read(root)
    assert [r["finished"] for r in kept] == [at(d, h) for d in reversed(days[:3]) for h in (1, 2)]


# -- the page's data -----------------------------------------------------------------------


def test_old_inputs_fold_into_exact_days():
    records = []
    for n in range(10):
        scored = 100 + n
        records.append(
            {
                "input": f"in-{n}",
                "rows": 200 + n,
                "rows_scored": scored,
                "sse": float((n + 1) * scored),  # RMSE sqrt(n + 1)
                "psi_pickup": 0.1 * n,
                "predicted_sum": 10.0 * (200 + n),
                "finished": f"2026-11-{1 + n // 4:02d}T10:{n:02d}:00Z",
            }
        )
    points = fold_inputs(records, recent=2)
    # 8 old inputs in days 1, 2 (4 each), then the 2 newest one by one.
    assert [p.inputs for p in points] == [4, 4, 1, 1]
    day1 = records[:4]
    assert points[0].rmse_live == pytest.approx(
        math.sqrt(sum(r["sse"] for r in day1) / sum(r["rows_scored"] for r in day1)), rel=1e-12
    )
    assert points[0].mean_predicted == pytest.approx(10.0)
    assert points[0].psi_pickup == pytest.approx(
        sum(r["psi_pickup"] * r["rows"] for r in day1) / sum(r["rows"] for r in day1)
    )
    assert points[-1].label == "in-9" and points[-1].rmse_live == pytest.approx(math.sqrt(10))


def test_the_snapshot_reads_registry_journal_and_rejected_notes(trained: Path, tmp_path: Path):
    rejected = tmp_path / "data" / "rejected"
    rejected.mkdir(parents=True)
    (rejected / "bad.parquet.json").write_text(
        json.dumps(
            {"input": "bad.parquet", "error": "not parquet", "rejected_at": "2026-12-01T00:00:00Z"}
        )
    )
    snap = read(trained)
    assert snap.current == (trained / "CURRENT").read_text().strip()
    assert [v.version for v in snap.versions] == [snap.current]
    assert [r["command"] for r in snap.runs] == ["infer", "train"]  # newest first
    assert [n["error"] for n in snap.rejected] == ["not parquet"]


# -- the command ---------------------------------------------------------------------------


def without_records(root: Path) -> None:
    """The current version as a model trained before the quality records were kept."""
    folder = root / "models" / (root / "CURRENT").read_text().strip()
    body = json.loads((folder / "model.json").read_text())
    for key in ("evaluation_records", "training_mix", "training_predicted_histogram"):
        body.pop(key, None)
    data = json.dumps(body).encode()
    (folder / "model.json").write_bytes(data)
    (folder / "SHA256SUMS").write_text(f"{hashlib.sha256(data).hexdigest()}  model.json\n")


def test_a_trained_model_carries_the_records_the_page_draws(trained: Path, tmp_path: Path):
    out = tmp_path / "r.html"
    run("report", "--artifacts", str(trained), "--output", str(out))
    html = out.read_text()
    assert "No records" not in html
    # history, live error, residuals, predicted vs actual, worst zones, drift
    assert html.count('<svg role="img"') == 6


def test_report_of_a_volume_without_records_says_so(trained: Path, tmp_path: Path):
    without_records(trained)
    (trained / "runs").rename(tmp_path / "runs-aside")  # and no input records either
    out = tmp_path / "page" / "report.html"
    result = run("report", "--artifacts", str(trained), "--output", str(out))
    html = out.read_text()
    current = (trained / "CURRENT").read_text().strip()
    assert str(out) in result.output
    assert f"No records for this version ({current})" in html
    assert html.count('<svg role="img"') == 1  # the model history; no records, no more
    # Nothing that names anything outside the page but XML namespaces, no script.
    assert "http:" not in re.sub(r'xmlns(:\w+)?="[^"]*"', "", html)
    assert "https:" not in html
    assert "<script" not in html


def test_report_of_a_missing_folder_is_a_usage_error(tmp_path: Path):
    result = run(
        "report", "--artifacts", str(tmp_path / "nope"), "--output", str(tmp_path / "r.html"),
        code=2,
    )  # fmt: skip
    assert "no such artifacts folder" in result.output
    assert not (tmp_path / "r.html").exists()


def test_training_refreshes_the_page_on_the_volume(trained: Path):
    page = (trained / "report.html").read_text()
    assert (trained / "CURRENT").read_text().strip() in page


def test_a_page_that_cannot_be_written_does_not_fail_training(make_trips, tmp_path: Path):
    root = tmp_path / "artifacts"
    (root / "report.html").mkdir(parents=True)  # a folder in the page's place
    jan = make_trips("jan.parquet", rows=2000, seed=1)
    feb = make_trips("feb.parquet", rows=2000, seed=2)
    args = ["train", "--train-data", str(jan), "--eval-data", str(feb), "--artifacts", str(root)]
    result = run(*args, "--report-page")
    assert "could not refresh the report" in result.output
    assert (root / "CURRENT").exists()
    (root / "report.html").rmdir()
    run(*args)  # without --report-page (the default): no page
    assert not (root / "report.html").exists()


def test_the_page_through_a_log_comes_back_whole(tmp_path: Path):
    html = "<!DOCTYPE html><p>é" + random.Random(1).randbytes(3000).hex() + "</p>"
    lines = ["a log line", *transport.frame(html), '{"output": "-"}']
    assert transport.unframe(lines) == html
    with pytest.raises(transport.IncompleteReportError, match="cut short"):
        transport.unframe(lines[:5])
    damaged = [*lines[:3], lines[3][::-1], *lines[4:]]
    with pytest.raises(transport.IncompleteReportError):
        transport.unframe(damaged)
    with pytest.raises(transport.IncompleteReportError, match="no report"):
        transport.unframe(["nothing here"])


def test_report_to_stdout_is_framed(trained: Path):
    result = run("report", "--artifacts", str(trained), "--output", "-")
    page = transport.unframe(result.stdout.splitlines())
    assert page.startswith("<!DOCTYPE html>") and (trained / "CURRENT").read_text().strip() in page


def test_a_synthetic_volume_with_records_renders_every_section(tmp_path: Path, trained: Path):
    root = tmp_path / "synthetic"
    made = make_volume(root, weights(trained), versions=8, inputs=30, records_from=2)
    out = tmp_path / "r.html"
    run("report", "--artifacts", str(root), "--output", str(out))
    html = out.read_text()
    for section in ("status", "history", "live", "current", "drift", "runs"):
        assert f'<section id="{section}">' in html
    assert html.count('<svg role="img"') == 6  # history, live, residuals, 2-D, zones, drift
    assert made["current"] in html and "No records" not in html


def test_help_train_and_infer_do_not_load_the_plotting_library(trained: Path):
    data = trained.parent / "data"
    train = [
        "train", "--train-data", str(data / "jan.parquet"), "--eval-data",
        str(data / "feb.parquet"), "--artifacts", str(trained),
    ]  # fmt: skip  # without --report-page, as a local training runs
    infer = ["infer", "--input", str(data / "incoming"), "--artifacts", str(trained)]
    code = (
        "import sys\n"
        "from job.cli import cli\n"
        f"for args in (['--help'], {train!r}, {infer!r}):\n"
        "    try:\n"
        "        cli(args, prog_name='taxi-job')\n"
        "    except SystemExit as exc:\n"
        "        print('exit', exc.code)\n"
        "print('LOADED' if 'matplotlib' in sys.modules else 'NOT LOADED')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = out.stdout.strip().splitlines()
    assert [line for line in lines if line.startswith("exit ")] == ["exit 0"] * 3, out.stderr
    assert lines[-1] == "NOT LOADED"


def test_promote_and_prune_are_journaled_when_they_change_something(trained: Path):
    current = (trained / "CURRENT").read_text().strip()
    run("models", "promote", current, "--artifacts", str(trained))  # current already
    run("models", "prune", "--keep", "1", "--artifacts", str(trained))  # nothing to prune
    assert [r["command"] for r in journal.read(trained)] == ["train", "infer"]
    last = journal.last(trained)
    assert last["models promote"]["summary"]["changed"] is False
    assert last["models prune"]["summary"]["pruned"] == []


def test_open_hands_the_written_page_to_the_browser(trained: Path, tmp_path, monkeypatch):
    # No desktop here: the browser is the one thing stood in for.
    opened = []
    monkeypatch.setattr("webbrowser.open", opened.append)
    out = tmp_path / "r.html"
    run("report", "--artifacts", str(trained), "--output", str(out), "--open")
    assert opened == [out.resolve().as_uri()]
