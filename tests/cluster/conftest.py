"""Fixtures for the launcher's tests: a Kubernetes API stand-in (kmock, see kfake.py) and a
kubeconfig that points the CLI at it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kfake import FakeCluster


@pytest.fixture
def fake() -> Iterator[FakeCluster]:
    cluster = FakeCluster().start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def kubeconfig(fake: FakeCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A kubeconfig naming the stand-in, set as TAXI_JOB_KUBECONFIG for the CLI."""
    path = fake.kubeconfig(tmp_path / "kubeconfig")
    monkeypatch.setenv("TAXI_JOB_KUBECONFIG", str(path))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    return path
