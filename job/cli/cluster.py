"""``launch`` and ``runs``: ad-hoc Jobs from the CronJobs, and the run history.

Thin commands: they load the cluster configuration when they run (never at import, so
``taxi-job train`` does not import the kubernetes client) and call :mod:`job.launcher` and
:mod:`job.runs`. Exit codes: :mod:`job.kube` and :mod:`job.launcher`.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Mapping
from typing import IO, Any

import click

from job.cli.options import common_options, option, reporting

DEFAULT_NAMESPACE = "taxi-job"


def cluster_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Where the CronJobs are and how to reach the API server."""
    decorators = [
        option(
            "-n",
            "--namespace",
            default=DEFAULT_NAMESPACE,
            show_default=True,
            help="The namespace of the train and infer CronJobs.",
        ),
        option(
            "--kubeconfig",
            type=click.Path(dir_okay=False),
            default=None,
            help="The kubeconfig file [default: $KUBECONFIG or ~/.kube/config; inside a pod, "
            "its service account].",
        ),
        option(
            "--context",
            default=None,
            help="The kubeconfig context [default: its current context].",
        ),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


class ProgressPrinter:
    """Progress on stderr: one line rewritten in place on a terminal, else a plain line at
    each change; pod log lines on stdout, without tearing the progress line."""

    def __init__(self, err: IO[str], tty: bool):
        self.err, self.tty = err, tty
        self.current = ""
        self.last_plain: tuple[str, str | None] | None = None
        self.lock = threading.Lock()

    def progress(self, progress: Any) -> None:
        with self.lock:
            if self.tty:
                self.current = progress.line()
                self.err.write("\r\x1b[K" + self.current)
                self.err.flush()
            elif (progress.state, progress.pod) != self.last_plain:
                self.last_plain = (progress.state, progress.pod)
                self.err.write(progress.line() + "\n")
                self.err.flush()

    def log(self, line: str) -> None:
        with self.lock:
            if self.tty and self.current:
                self.err.write("\r\x1b[K")
                self.err.flush()
            click.echo(line)
            if self.tty and self.current:
                self.err.write(self.current)
                self.err.flush()

    def close(self) -> None:
        with self.lock:
            if self.tty and self.current:
                self.err.write("\n")
                self.err.flush()
            self.current = ""


@click.command("launch")
@click.argument("command", type=click.Choice(["train", "infer"]))
@cluster_options
@option(
    "--set",
    "settings",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a setting for this run only, e.g. train-data=s3://.../2024-02.parquet "
    "(KEY as train-data or TAXI_JOB_TRAIN_DATA). Repeatable.",
)
@option(
    "--wait/--no-wait",
    default=False,
    show_default=True,
    help="Wait for the Job to finish, showing its progress.",
)
@option(
    "--logs/--no-logs",
    default=False,
    show_default=True,
    help="Follow the pod's logs while waiting (implies --wait).",
)
@option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="Stop waiting after this long (the Job keeps running) [default: no limit].",
)
@option(
    "--allow-overlap",
    is_flag=True,
    default=False,
    help="Start train even while another train Job is active.",
)
@common_options
@reporting
def launch(
    command: str,
    namespace: str,
    kubeconfig: str | None,
    context: str | None,
    settings: tuple[str, ...],
    wait: bool,
    logs: bool,
    timeout: float | None,
    allow_overlap: bool,
) -> Mapping[str, Any]:
    """Run train or infer now, as a Job made from its CronJob."""
    from job import kube, launcher

    overrides = launcher.parse_settings(settings)
    cluster = kube.connect(kubeconfig, context)
    job = launcher.launch(
        cluster.batch,
        namespace,
        command,
        settings=overrides,
        allow_overlap=allow_overlap,
        launched_by=cluster.identity,
    )
    name = job.metadata.name
    summary: dict[str, Any] = {"job": name, "namespace": namespace, "command": command}
    if overrides:
        summary["settings"] = [f"{k}={v}" for k, v in overrides.items()]
    if not (wait or logs):
        return summary
    printer = ProgressPrinter(sys.stderr, sys.stderr.isatty())
    try:
        result = launcher.wait(
            cluster.batch,
            cluster.core,
            namespace,
            name,
            timeout=timeout,
            on_progress=printer.progress,
            on_log=printer.log if logs else None,
        )
    finally:
        printer.close()
    summary.update(state=result.state, duration_s=round(result.elapsed_s, 1))
    for key, value in result.summary.items():
        summary.setdefault(key, value)
    return summary


def _runs_text(summary: Mapping[str, Any]) -> str:
    from job.runs import render_table

    return render_table(summary["runs"])


@click.command("runs")
@cluster_options
@option(
    "--limit",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Show at most this many runs, newest first.",
)
@common_options
@reporting(text=_runs_text)
def runs(
    namespace: str,
    kubeconfig: str | None,
    context: str | None,
    limit: int,
) -> Mapping[str, Any]:
    """List recent train and infer runs, scheduled and manual, with their results."""
    from job import kube
    from job.runs import list_runs

    cluster = kube.connect(kubeconfig, context)
    history = list_runs(cluster.batch, cluster.core, namespace, limit=limit)
    return {"namespace": namespace, "runs": [run.to_dict() for run in history]}
