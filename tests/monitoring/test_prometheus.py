"""End to end on loopback: real ``taxi-job`` processes push to a real Pushgateway, a real
Prometheus scrapes it with the shipped alert rules loaded and sends its alerts to a real
Alertmanager, and the test reads Prometheus's HTTP API and what Alertmanager delivers to a
webhook (where a team would route Slack, e-mail or a pager): the metrics carry the
summaries' values, a healthy run raises no alert and delivers nothing, and a stale
training, a rejected input and a degraded live RMSE raise theirs and reach the receiver.

The rules are a test copy of components/monitoring/taxi-job.rules.yaml with every `for:`
at 0 and the stale-training threshold at 30 seconds instead of 8 days (the one change of an
expression; the others are the shipped ones)."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from k8s.conftest import ROOT, find_tool
from trips import random_trips

from monitoring.conftest import free_port, http_server, prometheus_query, start, stop

pytestmark = pytest.mark.slow

TAXI_JOB = str(Path(sys.executable).with_name("taxi-job"))
RULES = ROOT / "components/monitoring/taxi-job.rules.yaml"
STALE_AFTER_S = 30
MINUTE = 60.0


def test_rules(path: Path) -> Path:
    rules = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("for", None)
            if rule.get("alert") == "TaxiJobTrainingStale":
                assert "> 8 * 24 * 3600" in rule["expr"]
                rule["expr"] = rule["expr"].replace("8 * 24 * 3600", str(STALE_AFTER_S))
    path.write_text(yaml.safe_dump(rules), encoding="utf-8")
    return path


test_rules.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


#: What Alertmanager delivered to the test's webhook: its JSON bodies, as they came.
Notifications = list[dict[str, Any]]


@pytest.fixture
def delivered() -> Iterator[tuple[str, Notifications]]:
    """A webhook receiver on loopback: its URL and the notifications posted to it."""
    received: Notifications = []

    def receive(handler: http.server.BaseHTTPRequestHandler, body: bytes) -> None:
        received.append(json.loads(body))
        handler.send_response(200)
        handler.end_headers()

    with http_server(receive) as url:
        yield f"{url}/alerts", received


@pytest.fixture
def alertmanager(tmp_path: Path, delivered: tuple[str, Notifications]) -> Iterator[str]:
    """A real Alertmanager (Debian's) routing every alert to the webhook at once."""
    binary = find_tool("prometheus-alertmanager")
    port = free_port()
    config = {
        "route": {
            "receiver": "webhook",
            "group_by": ["alertname"],
            "group_wait": "0s",
            "group_interval": "1s",
            "repeat_interval": "1h",
        },
        "receivers": [{"name": "webhook", "webhook_configs": [{"url": delivered[0]}]}],
    }
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    process = start(
        [
            binary,
            f"--config.file={tmp_path / 'alertmanager.yml'}",
            f"--storage.path={tmp_path / 'alertmanager'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",  # one instance: no gossip port
        ],
        f"http://127.0.0.1:{port}/-/ready",
        tmp_path / "alertmanager.log",
    )
    yield f"127.0.0.1:{port}"
    stop(process)


@pytest.fixture
def prometheus(tmp_path: Path, pushgateway: str, alertmanager: str) -> Iterator[str]:
    """A real Prometheus scraping the Pushgateway every second with the rules loaded, its
    alerts sent to the Alertmanager."""
    binary = find_tool("prometheus")
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(test_rules(tmp_path / "rules.yaml"))],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]},
        "scrape_configs": [
            {
                "job_name": "pushgateway",
                "honor_labels": True,
                "static_configs": [{"targets": [pushgateway.removeprefix("http://")]}],
            }
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    url = f"http://127.0.0.1:{port}"
    process = start(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        f"{url}/-/ready",
        tmp_path / "prometheus.log",
    )
    yield url
    stop(process)


def taxi_job(*args: str, pushgateway: str) -> tuple[int, dict[str, Any]]:
    """A real taxi-job process; its exit code and its JSON summary."""
    result = subprocess.run(
        [TAXI_JOB, *args, "--output-format", "json", "--pushgateway", pushgateway],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert "metrics not pushed" not in result.stderr, result.stderr
    lines = result.stdout.strip().splitlines()
    return result.returncode, (json.loads(lines[-1]) if lines else {})


def alerts(url: str) -> dict[str, str]:
    """Active alerts: name -> state (pending or firing)."""
    with urllib.request.urlopen(f"{url}/api/v1/alerts", timeout=5) as answer:
        body = json.load(answer)
    return {a["labels"]["alertname"]: a["state"] for a in body["data"]["alerts"]}


def eventually(check: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    """``check()``'s first truthy result; Prometheus scrapes and evaluates every second."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            assert result, f"{what}: not within {timeout} s"
            return result
        time.sleep(0.5)


def scalar(url: str, query: str) -> float | None:
    result = prometheus_query(url, query)
    if not result:
        return None
    (sample,) = result
    value = sample["value"]
    assert isinstance(value, list)
    return float(value[1])


def settled() -> None:
    """Wait for two scrapes and rule evaluations after now (every second): the alerts
    reflect every push so far."""
    time.sleep(2.5)


ROWS = 3000


def month(make_trips: Callable[..., Path], name: str, part: int, reversed_: bool = False) -> Path:
    """Part ``part`` (0-3) of one draw of trips: the months share their zone mix, as real
    months do (separate draws would each have zones of their own popularity: drift)."""
    pu, do, minutes = (a[part * ROWS : (part + 1) * ROWS] for a in random_trips(4 * ROWS, 7))
    if reversed_:  # long trips become short: the model is far off on these
        minutes = np.clip(61.0 - minutes, 1.0, 60.0)
    return make_trips(name, pu=pu.tolist(), do=do.tolist(), minutes=minutes.tolist())


def notified(received: Notifications) -> dict[str, dict[str, Any]]:
    """The alerts delivered firing so far: name -> the alert as the receiver got it."""
    return {
        alert["labels"]["alertname"]: alert
        for body in list(received)
        for alert in body["alerts"]
        if alert["status"] == "firing"
    }


def test_healthy_runs_raise_no_alert_then_failures_raise_theirs(
    tmp_path: Path,
    make_trips: Callable[..., Path],
    pushgateway: str,
    prometheus: str,
    delivered: tuple[str, Notifications],
) -> None:
    jan, feb = month(make_trips, "jan.parquet", 0), month(make_trips, "feb.parquet", 1)
    artifacts, incoming = tmp_path / "artifacts", tmp_path / "incoming"
    incoming.mkdir()
    (incoming / "mar.parquet").write_bytes(month(make_trips, "mar.parquet", 2).read_bytes())
    train = [
        "train",
        "--train-data",
        str(jan),
        "--eval-data",
        str(feb),
        "--artifacts",
        str(artifacts),
    ]
    infer = ["infer", "--input", str(incoming), "--artifacts", str(artifacts)]

    code, trained = taxi_job(*train, pushgateway=pushgateway)
    assert code == 0
    code, inferred = taxi_job(*infer, pushgateway=pushgateway)
    assert code == 0 and inferred["inputs_predicted"] == 1

    eventually(
        lambda: scalar(prometheus, 'taxi_job_infer_rows_predicted{command="infer"}'),
        "the infer run's metrics in Prometheus",
    )
    assert (
        scalar(prometheus, 'taxi_job_infer_rows_predicted{command="infer"}')
        == (inferred["rows_predicted"])
    )
    assert scalar(
        prometheus, 'taxi_job_train_rmse_seconds{command="train",dataset="eval"}'
    ) == pytest.approx(trained["rmse_eval"] * MINUTE, rel=1e-12)
    assert scalar(prometheus, 'taxi_job_last_exit_code{command="train"}') == 0
    assert scalar(prometheus, 'taxi_job_infer_waiting_for_model{command="infer"}') == 0
    version = trained["model_version"]
    assert (
        scalar(prometheus, f'taxi_job_current_model_info{{command="infer",version="{version}"}}')
        == 1
    )
    success = scalar(prometheus, 'taxi_job_last_success_timestamp_seconds{command="train"}')
    assert success is not None and abs(success - time.time()) < STALE_AFTER_S
    settled()
    assert alerts(prometheus) == {}
    assert delivered[1] == []  # nobody is told anything about healthy runs

    # a training that fails on bad input, and an input that infer sets aside
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    code, _ = taxi_job(
        "train",
        "--train-data",
        str(bad),
        "--eval-data",
        str(feb),
        "--artifacts",
        str(artifacts),
        pushgateway=pushgateway,
    )
    assert code == 2
    (incoming / "apr.parquet").write_text("not parquet either")
    code, rejected = taxi_job(*infer, pushgateway=pushgateway)
    assert code == 2 and rejected["inputs_rejected"] == 1

    eventually(
        lambda: alerts(prometheus).get("TaxiJobInputsRejected") == "firing",
        "TaxiJobInputsRejected firing",
    )
    assert scalar(prometheus, 'taxi_job_last_exit_code{command="train"}') == 2
    assert scalar(prometheus, 'taxi_job_consecutive_failures{command="train"}') == 1
    # add semantics: the failed training left the last success's time as it was
    assert scalar(prometheus, 'taxi_job_last_success_timestamp_seconds{command="train"}') == success
    eventually(
        lambda: alerts(prometheus).get("TaxiJobTrainingStale") == "firing",
        "TaxiJobTrainingStale firing",
    )
    active = alerts(prometheus)
    assert active == {"TaxiJobInputsRejected": "firing", "TaxiJobTrainingStale": "firing"}

    # ... and the people are told: Alertmanager delivered both, with the rules' words.
    def both_told() -> dict[str, dict[str, Any]] | None:
        told = notified(delivered[1])
        return told if set(told) == set(active) else None

    told = eventually(both_told, "both alerts delivered to the webhook")
    rejected_alert = told["TaxiJobInputsRejected"]
    assert rejected_alert["labels"]["severity"] == "warning"
    assert "reject" in rejected_alert["annotations"]["summary"].lower()
    assert "8 days" in told["TaxiJobTrainingStale"]["annotations"]["summary"]


def test_a_model_worse_on_the_newest_month_raises_the_live_rmse_alert(
    tmp_path: Path,
    make_trips: Callable[..., Path],
    pushgateway: str,
    prometheus: str,
    delivered: tuple[str, Notifications],
) -> None:
    """Needs infer's live RMSE (``rmse_live``, ``rows_scored`` in its summary)."""
    jan, feb = month(make_trips, "jan.parquet", 0), month(make_trips, "feb.parquet", 1)
    artifacts, incoming = tmp_path / "artifacts", tmp_path / "incoming"
    incoming.mkdir()
    train = [
        "train",
        "--train-data",
        str(jan),
        "--eval-data",
        str(feb),
        "--artifacts",
        str(artifacts),
    ]
    infer = ["infer", "--input", str(incoming), "--artifacts", str(artifacts)]
    code, trained = taxi_job(*train, pushgateway=pushgateway)
    assert code == 0

    (incoming / "mar.parquet").write_bytes(month(make_trips, "mar.parquet", 2).read_bytes())
    code, healthy = taxi_job(*infer, pushgateway=pushgateway)
    assert code == 0
    assert healthy["rows_scored"] > 1000
    assert healthy["rmse_live"] < 1.2 * trained["rmse_eval"]
    live = 'taxi_job_infer_live_rmse_seconds{command="infer"}'
    eventually(lambda: scalar(prometheus, live), "the live RMSE in Prometheus")
    assert scalar(prometheus, live) == pytest.approx(healthy["rmse_live"] * MINUTE, rel=1e-12)
    for end in ("pickup", "dropoff"):  # the months share their zone mix: no drift
        psi = scalar(prometheus, f'taxi_job_infer_zone_psi{{command="infer",trip_end="{end}"}}')
        assert psi == pytest.approx(healthy[f"psi_{end}"], rel=1e-12) and psi < 0.25
    settled()
    assert "TaxiJobLiveRmseDegraded" not in alerts(prometheus)
    assert "TaxiJobInputDrift" not in alerts(prometheus)

    (incoming / "apr.parquet").write_bytes(
        month(make_trips, "apr.parquet", 3, reversed_=True).read_bytes()
    )
    code, degraded = taxi_job(*infer, pushgateway=pushgateway)
    assert code == 0 and degraded["inputs_predicted"] == 1
    assert degraded["rmse_live"] > 1.2 * trained["rmse_eval"]
    eventually(
        lambda: alerts(prometheus).get("TaxiJobLiveRmseDegraded") == "firing",
        "TaxiJobLiveRmseDegraded firing",
    )
    assert scalar(prometheus, live) == pytest.approx(degraded["rmse_live"] * MINUTE, rel=1e-12)
    assert scalar(
        prometheus, 'taxi_job_infer_model_rmse_eval_seconds{command="infer"}'
    ) == pytest.approx(trained["rmse_eval"] * MINUTE, rel=1e-12)
    told = eventually(
        lambda: notified(delivered[1]).get("TaxiJobLiveRmseDegraded"),
        "TaxiJobLiveRmseDegraded delivered to the webhook",
    )
    assert set(notified(delivered[1])) == {"TaxiJobLiveRmseDegraded"}
    assert told["labels"]["command"] == "infer"
