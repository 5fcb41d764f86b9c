"""The image, run with podman exactly as the rendered manifests run it.

Each container of the rendered CronJobs becomes a ``podman run`` with the same args,
the ConfigMap's environment, the same user and groups, a read-only root with a tmpfs at
/tmp, no capabilities, its memory and CPU limits, and one podman volume standing in for
the claim. ``sample-data`` (the seed template) -> ``infer`` (no model yet: exit 0) -> ``train``
-> ``infer``, and the predictions are read from the volume on the host.

The image is built once per session with .ci/build-image (a stand-in base on CI
machines, which cannot pull one); set TAXI_JOB_TEST_IMAGE to test an image of your own.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from job import __version__
from job.errors import EXIT_NO_MODEL, EXIT_OK

from .conftest import ROOT, Manifest, find_tool, job_spec, missing, pod_spec

pytestmark = [pytest.mark.container, pytest.mark.slow]

TEST_IMAGE = "localhost/taxi-job:test"


@pytest.fixture(scope="session")
def image() -> str:
    """The image under test: TAXI_JOB_TEST_IMAGE, or one built from this tree."""
    if os.environ.get("TAXI_JOB_TEST_IMAGE"):
        return os.environ["TAXI_JOB_TEST_IMAGE"]
    find_tool("podman")
    find_tool("debootstrap")
    if os.geteuid() != 0:
        missing("building the test image needs root podman and debootstrap")
    result = subprocess.run(
        ["bash", str(ROOT / ".ci" / "build-image"), TEST_IMAGE],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return TEST_IMAGE


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    #: what the container wrote to its terminationMessagePath
    termination: str

    def summary(self) -> dict[str, Any]:
        return json.loads(self.termination)  # type: ignore[no-any-return]


def size(quantity: str) -> str:
    """A Kubernetes quantity (512Mi, 1Gi) as podman writes it (512m, 1g)."""
    for suffix, unit in (("Gi", "g"), ("Mi", "m"), ("Ki", "k")):
        if quantity.endswith(suffix):
            return quantity[: -len(suffix)] + unit
    return quantity


def cpus(quantity: str) -> str:
    return str(int(quantity[:-1]) / 1000) if quantity.endswith("m") else quantity


@pytest.fixture
def run_container(
    image: str, by_kind_name: Callable[[str, str], Manifest], tmp_path: Path
) -> Callable[..., Run]:
    """``run_container(workload, container_name, volume)``: run one container of a
    rendered workload as its pod would, with ``volume`` as the claim."""
    podman = find_tool("podman")

    def run(workload: Manifest, container_name: str, volume: str) -> Run:
        spec = pod_spec(workload)
        (container,) = [c for c in spec["containers"] if c["name"] == container_name]
        pod_context, context = spec["securityContext"], container["securityContext"]
        command = [
            podman,
            "run",
            "--rm",
            "--network=none",
            "--pull=never",
            "--user",
            f"{pod_context['runAsUser']}:{pod_context['runAsGroup']}",
            "--group-add",
            str(pod_context["fsGroup"]),
        ]
        if context["readOnlyRootFilesystem"]:
            command += ["--read-only", "--read-only-tmpfs=false"]
        if context["allowPrivilegeEscalation"] is False:
            command += ["--security-opt", "no-new-privileges"]
        for capability in context["capabilities"]["drop"]:
            command += ["--cap-drop", capability]
        limits = container["resources"]["limits"]
        command += ["--memory", size(limits["memory"]), "--cpus", cpus(limits["cpu"])]

        for source in container.get("envFrom", []):
            configmap = by_kind_name("ConfigMap", source["configMapRef"]["name"])
            for key, value in configmap["data"].items():
                command += ["--env", f"{key}={value}"]
        for item in container.get("env", []):
            if "value" in item:  # valueFrom (the downward API) exists only in a cluster
                command += ["--env", f"{item['name']}={item['value']}"]

        volumes = {v["name"]: v for v in spec["volumes"]}
        for mount in container["volumeMounts"]:
            source = volumes[mount["name"]]
            if "persistentVolumeClaim" in source:
                command += ["--volume", f"{volume}:{mount['mountPath']}"]
            elif "emptyDir" in source:
                limit = size(source["emptyDir"].get("sizeLimit", "64Mi"))
                command += ["--tmpfs", f"{mount['mountPath']}:rw,mode=1777,size={limit}"]
            else:
                raise AssertionError(f"no stand-in for volume {source}")

        # the kubelet mounts an empty, writable file at terminationMessagePath
        termination = tmp_path / f"termination-{len(list(tmp_path.iterdir()))}"
        termination.touch(mode=0o666)
        termination.chmod(0o666)
        path = container.get("terminationMessagePath", "/dev/termination-log")
        command += ["--volume", f"{termination}:{path}"]

        command += [image, *container["args"]]
        result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
        return Run(
            result.returncode, result.stdout, result.stderr, termination.read_text(encoding="utf-8")
        )

    return run


@pytest.fixture
def claim(podman_volume: Callable[[str], str]) -> Iterator[tuple[str, Path]]:
    """A fresh podman volume standing in for the claim, and its folder on the host."""
    name = podman_volume(f"taxi-job-test-{os.getpid()}")
    mountpoint = subprocess.run(
        [find_tool("podman"), "volume", "inspect", "--format", "{{.Mountpoint}}", name],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    yield name, Path(mountpoint)


def fail_job_codes(workload: Manifest) -> set[int]:
    rules = job_spec(workload)["podFailurePolicy"]["rules"]
    return {code for r in rules if r["action"] == "FailJob" for code in r["onExitCodes"]["values"]}


def test_seed_train_infer_on_one_volume(
    run_container: Callable[..., Run],
    by_kind_name: Callable[[str, str], Manifest],
    claim: tuple[str, Path],
) -> None:
    volume, on_host = claim
    seed = by_kind_name("CronJob", "seed-sample-data")
    train = by_kind_name("CronJob", "train")
    infer = by_kind_name("CronJob", "infer")

    seeded: dict[str, int] = {}
    for container in pod_spec(seed)["containers"]:
        run = run_container(seed, container["name"], volume)
        assert run.returncode == EXIT_OK, run.stderr
        written = Path(run.summary()["path"])
        assert (on_host / written.relative_to("/var/lib/taxi-job")).is_file()
        seeded[container["name"]] = run.summary()["rows"]

    # before the first training: no model yet, a quiet success (not a red Job a minute);
    # a model that fails its checksum still fails the Job at once
    run = run_container(infer, "infer", volume)
    assert run.returncode == EXIT_OK, run.stderr
    waited = run.summary()
    assert (waited["model_version"], waited["waiting_for_model"]) == (None, True)
    assert "no model yet" in run.stderr
    assert EXIT_NO_MODEL in fail_job_codes(infer)

    run = run_container(train, "train", volume)
    assert run.returncode == EXIT_OK, run.stderr
    trained = run.summary()
    assert trained["rows_read"] == seeded["train-month"]
    assert trained["eval_rows_read"] == seeded["eval-month"]
    current = (on_host / "artifacts" / "CURRENT").read_text(encoding="utf-8").strip()
    assert current == trained["model_version"]

    # the models template, as `taxi-job launch models` runs it (its default: list)
    run = run_container(by_kind_name("CronJob", "models"), "models", volume)
    assert run.returncode == EXIT_OK, run.stderr
    listed = json.loads(run.stdout.strip().splitlines()[-1])
    assert [(v["version"], v["status"], v["verified"]) for v in listed] == [
        (current, "current", True)
    ]
    assert run.summary()["versions"] == listed

    run = run_container(infer, "infer", volume)
    assert run.returncode == EXIT_OK, run.stderr
    inferred = run.summary()
    assert (inferred["model_version"], inferred["rows_predicted"]) == (current, seeded["incoming"])
    predictions = sorted((on_host / "artifacts" / "predictions").rglob("*.parquet"))
    assert len(predictions) == 1, run.stdout + run.stderr
    table = pq.read_table(predictions[0])
    assert "predicted_duration" in table.column_names
    assert table.num_rows == seeded["incoming"]
    durations = table.column("predicted_duration").to_pylist()
    assert all(d is not None and 0 < d < 24 * 60 for d in durations)

    # the next minute's run finds nothing new to predict, and succeeds
    run = run_container(infer, "infer", volume)
    assert run.returncode == EXIT_OK, run.stderr
    assert run.summary()["rows_predicted"] == 0


PROBE = """
import importlib.metadata as md, json, os, shutil, sys
print(json.dumps({
    "uid": os.getuid(), "gid": os.getgid(),
    "python": list(sys.version_info[:2]),
    "distributions": {d.metadata["Name"].lower().replace("_", "-"): d.version
                      for d in md.distributions()},
    "build_tools": [t for t in ("gcc", "cc", "make") if shutil.which(t)],
    "venv_pip": os.path.exists(os.path.join(sys.prefix, "bin", "pip")),
}))
"""


def test_image_holds_the_locked_dependencies_and_no_build_tools(image: str) -> None:
    podman = find_tool("podman")
    result = subprocess.run(
        [
            podman,
            "run",
            "--rm",
            "--network=none",
            "--pull=never",
            "--read-only",
            "--entrypoint",
            "python3",
            image,
            "-c",
            PROBE,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    probe = json.loads(result.stdout)
    assert (probe["uid"], probe["gid"]) == (10001, 10001)
    assert probe["python"] == [3, 11]
    assert probe["build_tools"] == []
    assert probe["venv_pip"] is False

    lock = (ROOT / "requirements.lock").read_text(encoding="utf-8")
    pinned = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", lock, re.MULTILINE))
    installed = probe["distributions"]
    for name, version in pinned.items():
        assert installed.get(name.lower()) == version, name
    # nothing but the lock and the project itself
    assert set(installed) - {n.lower() for n in pinned} == {"taxi-job"}

    version = subprocess.run(
        [podman, "run", "--rm", "--pull=never", image, "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert version.strip() == f"taxi-job, version {__version__}"


def test_volume_shell_copies_files_off_and_onto_the_volume(
    image: str, claim: tuple[str, Path], tmp_path: Path
) -> None:
    """What ``kubectl cp`` and ``kubectl exec`` run in manifests/tools/volume-shell.yaml
    (tar, mv), in a container made as that pod: the image has them, and they work as
    user 10001 on a read-only root."""
    podman = find_tool("podman")
    volume, on_host = claim
    spec = pod_spec(yaml.safe_load((ROOT / "manifests/tools/volume-shell.yaml").read_text()))
    (container,) = spec["containers"]
    pod_context = spec["securityContext"]
    predictions = on_host / "artifacts" / "predictions"
    predictions.mkdir(parents=True)
    pq.write_table(pa.table({"predicted_duration": [7.5, 12.0]}), predictions / "m.parquet")
    incoming = on_host / "data" / "incoming"
    incoming.mkdir(parents=True)
    os.chown(incoming, 0, pod_context["fsGroup"])  # as fsGroup leaves the volume's folders
    incoming.chmod(0o2775)

    name = f"taxi-job-volume-shell-{os.getpid()}"
    entrypoint, *args = container["command"]
    subprocess.run(
        [
            podman,
            "run",
            "--detach",
            "--name",
            name,
            "--network=none",
            "--pull=never",
            "--user",
            f"{pod_context['runAsUser']}:{pod_context['runAsGroup']}",
            "--group-add",
            str(pod_context["fsGroup"]),
            "--read-only",
            "--read-only-tmpfs=false",
            "--tmpfs",
            "/tmp:rw,mode=1777",
            "--security-opt",
            "no-new-privileges",
            "--cap-drop",
            "ALL",
            "--volume",
            f"{volume}:/var/lib/taxi-job",
            "--entrypoint",
            entrypoint,
            image,
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    try:
        # kubectl cp taxi-job/volume-shell:/var/lib/taxi-job/artifacts/predictions ./out
        out = subprocess.run(
            [
                podman,
                "exec",
                name,
                "tar",
                "cf",
                "-",
                "-C",
                "/var/lib/taxi-job/artifacts",
                "predictions",
            ],
            capture_output=True,
            timeout=60,
            check=True,
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(out)) as archive:
            archive.extractall(tmp_path, filter="data")
        copied = pq.read_table(tmp_path / "predictions" / "m.parquet")
        assert copied.column("predicted_duration").to_pylist() == [7.5, 12.0]

        # kubectl cp new.parquet taxi-job/volume-shell:/var/lib/taxi-job/data/incoming/.new.parquet
        payload = io.BytesIO()
        with tarfile.open(fileobj=payload, mode="w") as archive:
            info = tarfile.TarInfo(".new.parquet")
            info.size = 4
            archive.addfile(info, io.BytesIO(b"PAR1"))
        subprocess.run(
            [
                podman,
                "exec",
                "--interactive",
                name,
                "tar",
                "xmf",
                "-",
                "-C",
                "/var/lib/taxi-job/data/incoming",
            ],
            input=payload.getvalue(),
            capture_output=True,
            timeout=60,
            check=True,
        )
        # kubectl exec volume-shell -- mv .../.new.parquet .../new.parquet
        subprocess.run(
            [
                podman,
                "exec",
                name,
                "mv",
                "/var/lib/taxi-job/data/incoming/.new.parquet",
                "/var/lib/taxi-job/data/incoming/new.parquet",
            ],
            capture_output=True,
            timeout=60,
            check=True,
        )
        moved = incoming / "new.parquet"
        assert moved.read_bytes() == b"PAR1"
        assert (moved.stat().st_uid, moved.stat().st_gid) == (
            pod_context["runAsUser"],
            pod_context["fsGroup"],
        )
    finally:
        subprocess.run(
            [podman, "rm", "--force", "--time", "0", name], capture_output=True, check=False
        )
