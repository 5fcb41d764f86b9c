"""The report from a real cluster: after a first training and an infer, `taxi-job launch
report` on the laptop's side brings back a page with all six charts that headless Chromium
accepts at a laptop's and a phone's width (the same checks as
tests/test_report_browser.py), and whose status names the model the training published.

Runs only when TAXI_JOB_TEST_KUBECONFIG names a kubeconfig and TAXI_JOB_TEST_IMAGE an
image the cluster's node has (k8s-local: ``load-image``), in a namespace of its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import check_page, require_tools
from e2e import (
    IMAGE,
    KUBECONFIG,
    OWN_NAMESPACE_MARKS,
    SUSPEND_INFER,
    own_namespace,
    run_job,
    small_requests,
    write_overlay,
)

TAXI_JOB = str(Path(sys.executable).with_name("taxi-job"))

pytestmark = OWN_NAMESPACE_MARKS


def overlay(directory: Path, namespace: str) -> Path:
    return write_overlay(
        directory, namespace, IMAGE, patches=[SUSPEND_INFER, small_requests("train")]
    )


@pytest.fixture
def namespace(tmp_path: Path) -> Iterator[str]:
    with own_namespace(overlay, tmp_path) as name:
        yield name


def taxi_job(namespace: str, *args: str) -> Any:
    env = {**os.environ, "TAXI_JOB_KUBECONFIG": KUBECONFIG, "TAXI_JOB_NAMESPACE": namespace}
    result = subprocess.run(
        [TAXI_JOB, *args, "--output-format", "json"], env=env, capture_output=True, text=True,
        timeout=900, check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"taxi-job {' '.join(args)}: {result.stderr}"
    return json.loads(result.stdout.splitlines()[-1])


def test_launch_report_brings_the_page_back(namespace: str, tmp_path: Path) -> None:
    require_tools()
    run_job(namespace, from_cronjob="seed-sample-data", name="seed")
    trained = taxi_job(namespace, "launch", "train", "--wait", "--timeout", "600")
    inferred = taxi_job(namespace, "launch", "infer", "--wait", "--timeout", "600")
    assert inferred["inputs_predicted"] >= 1 and inferred["rows_scored"] > 0
    page = tmp_path / "report.html"
    got = taxi_job(namespace, "launch", "report", "--output", str(page), "--timeout", "600")
    assert got["state"] == "succeeded" and got["output"] == str(page)
    assert got["bytes"] == page.stat().st_size > 0
    # Every chart: history, live error, residuals, predicted vs actual, zones, drift.
    html = page.read_text()
    assert html.count('<svg role="img"') == 6
    for width in (1280, 390):  # a laptop, a phone
        status = check_page(page, width, charts=6)
        assert status["current-version"] == trained["model_version"]
        assert status["versions"] == "1"
        assert status["last-train"] != "never"  # the training's journal, read on the volume
    assert trained["job"] in html and inferred["job"] in html  # the journal names the Jobs
