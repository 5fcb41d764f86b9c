"""k8s_local_up, the fault tests' way back after a fault, against a stand-in `up`: the
real one fails only now and then (its bridge check, see the function), too rarely to
catch on purpose; the stand-in fails as often as the test says."""

from __future__ import annotations

from pathlib import Path

import faults
import pytest

STAND_IN_UP = """#!/usr/bin/env bash
n=$(($(cat "$0.calls" 2>/dev/null || echo 0) + 1))
echo "$n" > "$0.calls"
if [ "$n" -le {failures} ]; then
    echo "Error: ipv4: Address already assigned." >&2
    exit 2
fi
echo "k8s-local: up: node k8s-local-node Ready"
"""


def stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failures: int) -> Path:
    up = tmp_path / "up"
    up.write_text(STAND_IN_UP.format(failures=failures))
    up.chmod(0o755)
    monkeypatch.setattr(faults, "K8S_LOCAL", tmp_path)
    return tmp_path / "up.calls"


def test_an_up_that_fails_once_is_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls = stand_in(tmp_path, monkeypatch, failures=1)
    up = faults.k8s_local_up()
    assert up.returncode == 0
    assert "node k8s-local-node Ready" in up.stdout
    assert calls.read_text().strip() == "2"
    assert "attempt 1 of 3: Error: ipv4: Address already assigned." in capsys.readouterr().out


def test_an_up_that_keeps_failing_is_reported_after_three_tries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = stand_in(tmp_path, monkeypatch, failures=5)
    up = faults.k8s_local_up()
    assert up.returncode == 2
    assert "Address already assigned" in up.stderr
    assert calls.read_text().strip() == "3"
