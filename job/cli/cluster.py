"""``launch`` and ``runs``: ad-hoc Jobs from the CronJobs, and the run history.

Thin commands: they load the cluster configuration when they run (never at import, so
``taxi-job train`` does not import the kubernetes client) and call :mod:`job.launcher` and
:mod:`job.runs`. Exit codes: :mod:`job.kube` and :mod:`job.launcher`.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import click

from job.cli.options import common_options, option, render_columns, render_text, reporting
from job.envvars import ENV_PREFIX, option_of
from job.launcher import DEFAULT_TTL
from job.runs import name_of

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
        option(
            "--prefix",
            default=None,
            metavar="PREFIX",
            help="Of copies of the CronJobs in one namespace (a kustomize namePrefix such as "
            "blue-), the one whose names start with PREFIX [default: the only copy; runs: "
            "all copies].",
        ),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def settable(command: str) -> dict[str, str]:
    """What ``--set`` may override for ``command``: the variable of each of its options,
    with its short spelling (``TAXI_JOB_TRAIN_DATA``: ``train-data``)."""
    from job.cli import cli

    ctx = click.get_current_context(silent=True) or click.Context(cli)
    target = cli.get_command(ctx, command)
    assert target is not None, command
    found: dict[str, str] = {}
    for param in target.params:
        envvars = [param.envvar] if isinstance(param.envvar, str) else param.envvar or []
        for envvar in envvars:
            if envvar.startswith(ENV_PREFIX):
                found[envvar] = option_of(envvar)
    return found


def check_settings(command: str, overrides: Mapping[str, str]) -> None:
    """A usage error (exit 2) for a setting ``command`` does not read: a typo would
    otherwise become a variable that nothing reads, and the run would use the default."""
    known = settable(command)
    unknown = [name for name in overrides if name not in known]
    if unknown:
        named = ", ".join(f"{option_of(name)} ({name})" for name in unknown)
        raise click.BadParameter(
            f"{command} has no setting {named}; it has: {', '.join(sorted(known.values()))}",
            ctx=click.get_current_context(silent=True),
            param_hint="'--set'",
        )


class ProgressPrinter:
    """Progress on stderr: one line rewritten in place on a terminal (clipped to its
    ``width``, since a wrapped line cannot be rewritten), else a plain line at each change;
    pod log lines on stdout, without tearing the progress line."""

    def __init__(self, err: IO[str], tty: bool, width: int | None = None):
        self.err, self.tty, self.width = err, tty, width
        self.current = ""
        self.last_plain: tuple[str, str | None] | None = None
        self.lock = threading.Lock()

    def progress(self, progress: Any) -> None:
        with self.lock:
            if self.tty:
                line = progress.line()
                if self.width is not None and len(line) >= self.width:
                    line = line[: max(self.width - 2, 0)] + "…"
                self.current = line
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


def _terminal_width(stream: IO[str]) -> int | None:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError):
        return None


def _launch_text(summary: Mapping[str, Any]) -> str:
    if "state" not in summary:
        # Not waited for: the name alone, so that JOB=$(taxi-job launch train) works.
        return str(summary["job"])
    if summary["command"] == "models":
        from job.cli.models import render_result

        return render_result(summary["args"], summary.get("result"))
    return render_text(summary)


# Unknown options go to ARGS (`launch models promote V --reason R`): the models command
# in the pod parses them.
@click.command("launch", context_settings={"ignore_unknown_options": True})
@click.argument("command", type=click.Choice(["train", "infer", "models", "report"]))
@click.argument("args", nargs=-1, type=click.UNPROCESSED, metavar="[MODELS ARGS]...")
@cluster_options
@option(
    "--set",
    "settings",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override an option of the command for this run only, e.g. "
    "train-data=s3://.../2024-02.parquet (KEY as train-data or TAXI_JOB_TRAIN_DATA; an "
    "option the command does not have is an error). Repeatable.",
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
    help="Start train even while another train Job is active (infer only warns).",
)
@option(
    "--ttl",
    type=click.IntRange(min=1),
    default=DEFAULT_TTL,
    show_default=True,
    metavar="SECONDS",
    help="Remove the Job, its pod and its log this long after it finished (a week).",
)
@option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="launch report: where the page goes on this machine (it comes back in the pod's "
    "log).  [default: report.html]",
)
@option(
    "--open/--no-open",
    "open_",
    default=False,
    help="launch report: open the page in a browser once written.",
)
@common_options
@reporting(text=_launch_text)
def launch(
    command: str,
    args: tuple[str, ...],
    namespace: str,
    kubeconfig: str | None,
    context: str | None,
    prefix: str | None,
    settings: tuple[str, ...],
    wait: bool,
    logs: bool,
    timeout: float | None,
    allow_overlap: bool,
    ttl: int,
    output: Path | None,
    open_: bool,
) -> Mapping[str, Any]:
    """Run train or infer now, as a Job made from its CronJob.

    `launch models ARGS...` runs `taxi-job models ARGS...` on the cluster's volume, waits
    and prints its result: `launch models promote VERSION --reason TEXT` is a rollback.
    `launch report --output FILE` draws the report page on the cluster's volume and
    writes it here."""
    from job import kube, launcher

    overrides = launcher.parse_settings(settings)
    check_settings(command, overrides)
    job_args = None
    template = command
    if command == "models":
        from job.cli.models import launch_args

        job_args = launch_args(args)
        wait = True  # the result is the point
    elif command == "report":
        if args:
            raise click.UsageError(f"launch report takes no arguments (got {' '.join(args)})")
        # The models template: same image, volume and security, no schedule; the page
        # comes back framed in the pod's log (job.report.transport).
        template, job_args = "models", ["report", "--output", "-"]
        wait = True
    elif args:
        raise click.UsageError(
            f"launch {command} takes no arguments (got {' '.join(args)}); "
            "--set KEY=VALUE changes an option for this run"
        )
    cluster = kube.connect(kubeconfig, context)
    if command == "models":  # who promoted, for the promotion history
        overrides.setdefault("TAXI_JOB_BY", cluster.identity)
    # The API server away while starting: try again until --timeout (or a few minutes).
    deadline = None if timeout is None else time.monotonic() + timeout
    job = launcher.launch(
        cluster.batch,
        namespace,
        template,
        settings=overrides,
        allow_overlap=allow_overlap,
        launched_by=cluster.identity,
        args=job_args,
        ttl=ttl,
        prefix=prefix,
        outage=kube.Outage(cluster.server, deadline=deadline),
    )
    name = name_of(job)
    summary: dict[str, Any] = {"job": name, "namespace": namespace, "command": command}
    if job_args is not None and command == "models":
        summary["args"] = job_args[1:]
    if overrides:
        summary["settings"] = [f"{k}={v}" for k, v in overrides.items()]
    if not (wait or logs):
        return summary
    output_lines: list[str] = []
    if click.get_current_context().params.get("output_format") == "text":
        # The name first, before the pod's log: a script can read it from the first line.
        click.echo(name)
    tty = sys.stderr.isatty()
    printer = ProgressPrinter(sys.stderr, tty, _terminal_width(sys.stderr) if tty else None)
    try:
        result = launcher.wait(
            cluster.batch,
            cluster.core,
            namespace,
            name,
            timeout=timeout,
            on_progress=printer.progress,
            on_log=_log_sink(printer.log if logs else None, output_lines if job_args else None),
        )
    finally:
        printer.close()
    summary.update(state=result.state, duration_s=round(result.elapsed_s, 1))
    if command == "report":
        return {**summary, **_save_report(output, output_lines, open_)}
    if job_args is not None:
        from job.cli.models import result_of

        summary["result"] = result_of(output_lines, result.summary)
        return summary
    for key, value in result.summary.items():
        summary.setdefault(key, value)
    return summary


def _save_report(output: Path | None, lines: list[str], open_: bool) -> dict[str, Any]:
    """Write the page carried by the pod's log ``lines`` to ``output``, whole or not at all."""
    from job import volume
    from job.report.transport import unframe

    page = unframe(lines).encode()
    target = output or Path("report.html")
    with volume.writing("the report", target):
        volume.write_atomic(target.absolute(), page)
    if open_:
        import webbrowser

        webbrowser.open(target.resolve().as_uri())
    return {"output": str(target), "bytes": len(page)}


def _log_sink(
    show: Callable[[str], None] | None, keep: list[str] | None
) -> Callable[[str], None] | None:
    """Where the pod's log lines go: shown (``--logs``), kept (a models command's output is
    its result), both or neither."""
    if keep is None:
        return show

    def sink(line: str) -> None:
        keep.append(line)
        if show is not None:
            show(line)

    return sink


def _runs_text(summary: Mapping[str, Any]) -> str:
    from job.runs import TABLE_HEADER, table_row

    if not summary["runs"]:  # a namespace with a typo has no runs either: name it
        return f"no runs in namespace {summary['namespace']}"
    return render_columns(TABLE_HEADER, [table_row(run) for run in summary["runs"]])


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
    prefix: str | None,
    limit: int,
) -> Mapping[str, Any]:
    """List recent train and infer runs, scheduled and manual, with their results."""
    from job import kube
    from job.runs import list_runs

    cluster = kube.connect(kubeconfig, context)
    history = list_runs(cluster.batch, cluster.core, namespace, limit=limit, prefix=prefix)
    return {"namespace": namespace, "runs": [run.to_dict() for run in history]}
