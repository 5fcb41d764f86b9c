"""components/monitoring: a Pushgateway beside the CronJobs, whose URL every run gets, and
the alert rules from one source (the plain rules file, a ConfigMap of it, and the
PrometheusRule generated from it); checked like the base (strict schemas, checkov)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT, Manifest, pod_spec
from .test_checkers import KUBERNETES_VERSIONS
from .test_manifests import containers

MONITORING = "components/monitoring"
OPERATOR = "components/monitoring/prometheus-operator"
RULES = ROOT / MONITORING / "taxi-job.rules.yaml"


@pytest.fixture
def monitored(render: Callable[[Path], str], overlay: Callable[..., Path]) -> list[Manifest]:
    text = render(overlay(components=[MONITORING]))
    return [d for d in yaml.safe_load_all(text) if d]


def get(manifests: list[Manifest], kind: str, name: str) -> Manifest:
    (found,) = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name]
    return found


def test_the_base_pushes_nowhere(manifests: list[Manifest]) -> None:
    config = get(manifests, "ConfigMap", "taxi-job-config")
    assert config["data"]["TAXI_JOB_PUSHGATEWAY"] == ""
    assert not [m for m in manifests if m["kind"] == "Deployment"]


def test_every_run_pushes_to_the_components_pushgateway(
    monitored: list[Manifest], manifests: list[Manifest]
) -> None:
    config = get(monitored, "ConfigMap", "taxi-job-config")
    service = get(monitored, "Service", "taxi-job-pushgateway")
    port = service["spec"]["ports"][0]["port"]
    name = service["metadata"]["name"]
    assert config["data"]["TAXI_JOB_PUSHGATEWAY"] == f"http://{name}:{port}"
    # the CronJobs read it through envFrom, and the base's objects are otherwise unchanged
    for before in manifests:
        after = get(monitored, before["kind"], before["metadata"]["name"])
        if before["kind"] == "ConfigMap":
            after = {**after, "data": {**after["data"], "TAXI_JOB_PUSHGATEWAY": ""}}
        assert after == before
    namespace = get(manifests, "Namespace", "taxi-job")["metadata"]["name"]
    added = [m for m in monitored if m not in manifests and m["kind"] != "ConfigMap"]
    assert {m["metadata"]["namespace"] for m in added} == {namespace}


def test_the_pushgateway_is_upstreams_pinned_and_runs_restricted(
    monitored: list[Manifest],
) -> None:
    deployment = get(monitored, "Deployment", "taxi-job-pushgateway")
    spec = pod_spec(deployment)
    (container,) = containers(deployment)
    image, tag = container["image"].rsplit(":", 1)
    assert image == "prom/pushgateway" and tag.startswith("v") and tag != "latest"
    assert spec["automountServiceAccountToken"] is False
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    context = container["securityContext"]
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert {"cpu", "memory"} <= container["resources"]["limits"].keys()
    # its only writes go to the emptyDir it persists to
    (mount,) = container["volumeMounts"]
    assert f"--persistence.file={mount['mountPath']}/pushgateway.data" in container["args"]
    service = get(monitored, "Service", "taxi-job-pushgateway")
    selected = service["spec"]["selector"].items()
    assert selected <= deployment["spec"]["template"]["metadata"]["labels"].items()
    # the base refuses all ingress: the component opens the Pushgateway's port, and only it
    policy = get(monitored, "NetworkPolicy", "allow-pushgateway")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= selected
    assert policy["spec"]["ingress"] == [{"ports": [{"port": 9091, "protocol": "TCP"}]}]


def test_the_rules_come_from_one_source(
    render: Callable[[Path], str], overlay: Callable[..., Path]
) -> None:
    source = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    both = [d for d in yaml.safe_load_all(render(overlay(components=[MONITORING, OPERATOR]))) if d]
    config = get(both, "ConfigMap", "taxi-job-alert-rules")
    assert yaml.safe_load(config["data"]["taxi-job.rules.yaml"]) == source
    rule = get(both, "PrometheusRule", "taxi-job")
    assert rule["spec"] == source
    # prometheus-operator scrapes the component's Service, keeping the pushed labels
    monitor = get(both, "ServiceMonitor", "taxi-job-pushgateway")
    service = get(both, "Service", "taxi-job-pushgateway")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["honorLabels"] is True
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    # the committed PrometheusRule is what the generator makes of today's rules file
    generated = subprocess.run(
        [sys.executable, str(ROOT / "scripts/prometheusrule.py")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    committed = (ROOT / OPERATOR / "prometheusrule.yaml").read_text(encoding="utf-8")
    assert committed == generated, (
        "run: python scripts/prometheusrule.py > " + OPERATOR + "/prometheusrule.yaml"
    )


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_monitored_manifests_validate_strictly(
    tool: Callable[[str], str],
    render: Callable[[Path], str],
    overlay: Callable[..., Path],
    tmp_path: Path,
    version: str,
) -> None:
    rendered = tmp_path / "monitored.yaml"
    rendered.write_text(render(overlay(components=[MONITORING])), encoding="utf-8")
    result = subprocess.run(
        [tool("kubernetes-validate"), "--strict", "--quiet", "-k", version, str(rendered)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_checkov_finds_no_failure_in_the_monitored_manifests(
    tool: Callable[[str], str],
    render: Callable[[Path], str],
    overlay: Callable[..., Path],
    tmp_path: Path,
) -> None:
    rendered = tmp_path / "monitored.yaml"
    rendered.write_text(render(overlay(components=[MONITORING])), encoding="utf-8")
    result = subprocess.run(
        [
            tool("checkov"),
            "--framework",
            "kubernetes",
            "--file",
            str(rendered),
            "--output",
            "json",
            "--skip-download",
            "--compact",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
    )
    report = json.loads(result.stdout)
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert failed == []
    assert report["summary"]["parsing_errors"] == 0
