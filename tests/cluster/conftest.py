"""Fixtures for the launcher's tests: a Kubernetes API stand-in (kmock, see kfake.py) and a
kubeconfig that points the CLI at it; and for the cluster suite, the real cluster that
TAXI_JOB_TEST_KUBECONFIG names, with the project deployed on it (e2e.py)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e import Deployment, write_overlay
from k8s.conftest import ROOT, missing, require_tools
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


# --- the real cluster (TAXI_JOB_TEST_KUBECONFIG) ------------------------------------------


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """In CI (TAXI_JOB_REQUIRE_TOOLS=1) a test marked ``cluster`` fails without a cluster,
    before any skipif of its own can skip it: CI never passes by skipping them."""
    if (
        item.get_closest_marker("cluster")
        and require_tools()
        and not os.environ.get("TAXI_JOB_TEST_KUBECONFIG")
    ):
        pytest.fail(
            "TAXI_JOB_TEST_KUBECONFIG names no cluster (TAXI_JOB_REQUIRE_TOOLS is set: "
            ".ci/run starts ../shared/k8s-local)",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def test_kubeconfig() -> str:
    """The kubeconfig of a real cluster for the cluster suite; without one its tests skip,
    or fail where TAXI_JOB_REQUIRE_TOOLS=1 (CI, where .ci/run starts one)."""
    path = os.environ.get("TAXI_JOB_TEST_KUBECONFIG")
    if not path:
        missing("TAXI_JOB_TEST_KUBECONFIG names no cluster (README: 'The cluster suite')")
    assert path is not None
    return path


@pytest.fixture(scope="session")
def deployment(
    test_kubeconfig: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Deployment]:
    """The project deployed once for the session: scripts/first-run.sh as it is (apply,
    seed, train, infer) with the project's kustomization, through an overlay that only puts
    it into a fresh namespace and names the image under test; then the volume-shell pod.
    The namespace is deleted at the end (TAXI_JOB_E2E_KEEP=1 keeps it, to look around)."""
    workdir = tmp_path_factory.mktemp("e2e")
    deployed = Deployment.fresh(test_kubeconfig, workdir)
    overlay = write_overlay(workdir / "overlay", deployed.namespace, deployed.image)
    env = deployed.env()
    env["PATH"] = f"{Path(deployed.kubectl_path).parent}{os.pathsep}{env['PATH']}"
    try:
        started = time.monotonic()
        first_run = subprocess.run(
            ["bash", str(ROOT / "scripts" / "first-run.sh"), str(overlay)],
            env=env,
            capture_output=True,
            text=True,
            timeout=1500,
            check=False,
        )
        deployed.first_run_output = first_run.stdout
        print(
            f"first-run.sh in {deployed.namespace}: exit {first_run.returncode} after "
            f"{time.monotonic() - started:.0f} s"
        )
        if first_run.returncode != 0:
            pytest.fail(
                f"scripts/first-run.sh failed (exit {first_run.returncode}):\n"
                f"{first_run.stdout}\n{first_run.stderr}\n{deployed.explain(None)}"
            )
        deployed.apply_manifest("manifests/tools/volume-shell.yaml", "shell", create=True)
        deployed.kubectl("wait", "--for=condition=Ready", "pod/volume-shell", "--timeout=120s")
        yield deployed
    finally:
        if os.environ.get("TAXI_JOB_E2E_KEEP", "") in ("", "0"):
            deployed.kubectl("delete", "namespace", deployed.namespace, "--wait=false", check=False)
