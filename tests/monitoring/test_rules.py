"""The shipped alert rules pass ``promtool check rules`` and their unit tests
(tests/monitoring/rules_test.yaml, ``promtool test rules``), and those unit tests hold
each alert both ways: an alert made to always fire fails its not-firing cases, one made to
never fire fails its firing cases."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from k8s.conftest import ROOT, find_tool

RULES = ROOT / "components/monitoring/taxi-job.rules.yaml"
UNIT_TESTS = Path(__file__).with_name("rules_test.yaml")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [find_tool("promtool"), *args], capture_output=True, text=True, timeout=300, check=False
    )


def alerts() -> list[str]:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return [rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule]


def test_the_rules_file_is_valid() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in result.stdout


def test_the_rules_pass_their_unit_tests() -> None:
    result = promtool("test", "rules", str(UNIT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    cases = yaml.safe_load(UNIT_TESTS.read_text(encoding="utf-8"))["tests"]
    checks = [check for case in cases for check in case["alert_rule_test"]]
    for alert in alerts():
        outcomes = {bool(c["exp_alerts"]) for c in checks if c["alertname"] == alert}
        assert outcomes == {True, False}, alert


def mutated(tmp_path: Path, alert: str, expr: str) -> Path:
    """The unit tests against a copy of the rules where ``alert``'s expression is ``expr``."""
    rules = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alert:
                rule["expr"] = expr
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules), encoding="utf-8")
    tests = yaml.safe_load(UNIT_TESTS.read_text(encoding="utf-8"))
    tests["rule_files"] = ["rules.yaml"]
    tests["tests"] = [
        case
        for case in tests["tests"]
        if any(check["alertname"] == alert for check in case["alert_rule_test"])
    ]
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests), encoding="utf-8")
    return tmp_path / "tests.yaml"


@pytest.mark.parametrize("alert", alerts())
def test_the_unit_tests_catch_an_alert_that_always_or_never_fires(
    tmp_path: Path, alert: str
) -> None:
    always = promtool("test", "rules", str(mutated(tmp_path, alert, "vector(1)")))
    assert always.returncode != 0, f"{alert}: no test fails when it always fires"
    never = promtool("test", "rules", str(mutated(tmp_path, alert, "vector(1) == 0")))
    assert never.returncode != 0, f"{alert}: no test fails when it never fires"
