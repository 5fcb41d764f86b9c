"""Options shared by every command, defined once, and the way a command reports its result.

Every option reads an environment variable ``TAXI_JOB_<OPTION>`` (a flag wins over the
environment, the environment over the default), so a CronJob sets them from a ConfigMap.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, overload

import click

from job import logs
from job.envvars import envvar
from job.errors import EXIT_UNEXPECTED, InputsRejectedError, TaxiJobError
from job.volume import now_utc

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


def option(*param_decls: str, **attrs: Any) -> Callable[[F], F]:
    """``click.option`` reading ``TAXI_JOB_<LONG NAME>`` from the environment, shown in --help."""
    long = next(d for d in param_decls if d.startswith("--")).split("/")[0]
    attrs.setdefault("envvar", envvar(long[2:]))
    attrs.setdefault("show_envvar", True)
    return click.option(*param_decls, **attrs)


#: The shared volume's artifacts folder, for every command that works on it.
artifacts_option = option(
    "--artifacts",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Artifacts folder: model versions, CURRENT, predictions.",
)

#: The training lock guards every change of the model store: train, models promote, prune.
lock_timeout_option = option(
    "--lock-timeout",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Seconds to wait when a training or a promotion holds the lock.",
)


#: Where a run pushes its metrics at its end (train, infer, models promote|prune,
#: sample-data, fetch); empty: nowhere. See job.metrics.
pushgateway_option = option(
    "--pushgateway",
    metavar="URL",
    default=None,
    help="Push the run's Prometheus metrics to this Pushgateway at its end "
    "(http://HOST:9091); a Pushgateway that fails costs a warning, never the run.",
)


def common_options(func: F) -> F:
    """Logging, output format and termination-log options, for every command."""
    decorators = [
        option(
            "-v",
            "--verbose",
            "verbose",
            count=True,
            help="More log output (repeat for more).",
        ),
        option(
            "-q",
            "--quiet",
            "quiet",
            count=True,
            help="Less log output.",
        ),
        option(
            "--log-format",
            type=click.Choice(["text", "json"]),
            default="text",
            show_default=True,
            help="Log lines on stderr as text or as JSON objects.",
        ),
        option(
            "--output-format",
            type=click.Choice(["text", "json"]),
            default="text",
            show_default=True,
            help="The summary on stdout: text, or one JSON object on the last line.",
        ),
        option(
            "--termination-log",
            type=click.Path(dir_okay=False, path_type=Path),
            default=None,
            help="Also write the JSON summary here (a pod's terminationMessagePath).",
        ),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def render_text(summary: Mapping[str, Any]) -> str:
    """A summary as aligned ``key: value`` lines."""
    width = max((len(k) for k in summary), default=0)
    lines = []
    for key, value in summary.items():
        if isinstance(value, float):
            value = f"{value:.4f}"
        elif isinstance(value, list | tuple):
            value = ", ".join(str(v) for v in value) if value else "-"
        lines.append(f"{key.ljust(width)}  {value}")
    return "\n".join(lines)


def render_columns(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Rows as aligned columns under ``header``, like ``kubectl get``; ``None`` shows as
    ``-``, and the last column is not padded."""
    cells = [list(header)] + [["-" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
        for r in cells
    )


#: The kubelet keeps at most this many bytes of a termination message.
TERMINATION_LOG_BYTES = 4096
#: Left out of a termination message first when it is too long: detail that the journal
#: and stdout keep, which the run's own figures sum up.
DROPPED_FIRST = ("input_records",)


def fit_json(summary: Mapping[str, Any], limit: int = TERMINATION_LOG_BYTES) -> str:
    """``summary`` as JSON of at most ``limit`` bytes, still valid JSON: an infer run's
    per-input records go first (the run's figures stay), then long lists (its outputs) are
    cut, keeping their first items and a count of the rest."""
    data = dict(summary)
    text = json.dumps(data, default=str)
    for key in DROPPED_FIRST:
        if len(text.encode()) > limit and isinstance(data.get(key), list):
            data[f"{key}_omitted"] = len(data.pop(key))
            text = json.dumps(data, default=str)
    summary = dict(data)  # the lists whole, to cut from; ``data`` gets the cut ones
    keep = max((len(v) for v in data.values() if isinstance(v, list)), default=0)
    while len(text.encode()) > limit and keep > 0:
        keep //= 2
        for key, value in summary.items():
            if isinstance(value, list) and len(value) > keep:
                data[key] = value[:keep]
                data[f"{key}_omitted"] = len(value) - keep
        text = json.dumps(data, default=str)
    if len(text.encode()) > limit:  # still too long: scalars only, long strings shortened
        data = {
            k: v[:200] + "..." if isinstance(v, str) and len(v) > 200 else v
            for k, v in summary.items()
            if not isinstance(v, list | dict)
        }
        text = json.dumps(data, default=str)
    return text if len(text.encode()) <= limit else json.dumps({"truncated": True})


def write_termination_log(path: Path, summary: Mapping[str, Any]) -> None:
    """Best effort: a failure to write the pod's termination message must not fail the run."""
    try:
        path.write_text(fit_json(summary), encoding="utf-8")
    except OSError as exc:
        logger.warning("could not write the termination log %s: %s", path, exc)


Body = Callable[..., Mapping[str, Any]]
TextRenderer = Callable[[Mapping[str, Any]], str]
JsonPayload = Callable[[Mapping[str, Any]], Any]
AfterHook = Callable[[Mapping[str, Any], Mapping[str, Any]], None]


@overload
def reporting(func: Body, /) -> Callable[..., None]: ...
@overload
def reporting(
    *,
    text: TextRenderer = ...,
    payload: JsonPayload | None = ...,
    journal: str | None = ...,
    after: AfterHook | None = ...,
) -> Callable[[Body], Callable[..., None]]: ...
def reporting(
    func: Body | None = None,
    /,
    *,
    text: TextRenderer = render_text,
    payload: JsonPayload | None = None,
    journal: str | None = None,
    after: AfterHook | None = None,
) -> Callable[..., None] | Callable[[Body], Callable[..., None]]:
    """Wrap a command body that returns its summary: configure logging, print the summary,
    and turn the project's exceptions into one clear line on stderr and their exit code;
    then, success or failure, push the run's metrics (``--pushgateway``, job.metrics).

    ``@reporting(text=...)`` renders the text summary its own way (a table, say);
    ``payload`` picks what ``--output-format json`` prints (a list, say; the termination
    log keeps the whole summary, an object). ``journal`` names the command in the run
    journal on the volume (:mod:`job.journal`, written at the end of every run of it,
    success or failure, into the ``--artifacts`` folder); ``after`` runs last, after a
    success is reported, with the summary and the command's options (best effort: it
    must not raise)."""
    if func is None:
        return functools.partial(
            _reporting, text=text, payload=payload, journal=journal, after=after
        )
    return _reporting(func, text=text, payload=payload, journal=journal, after=after)


def _journal(
    command: str | None,
    options: Mapping[str, Any],
    started: str,
    code: int,
    error: str | None,
    summary: Mapping[str, Any] | None,
) -> None:
    """Record the run in the journal of its ``--artifacts`` folder, if it keeps one."""
    artifacts = options.get("artifacts")
    if command is None or not isinstance(artifacts, Path):
        return
    from job import journal

    journal.record(
        artifacts,
        command,
        started=started,
        finished=now_utc(),
        exit_code=code,
        error=error,
        summary=summary,
    )


def _reporting(
    func: Body,
    text: TextRenderer,
    payload: JsonPayload | None = None,
    journal: str | None = None,
    after: AfterHook | None = None,
) -> Callable[..., None]:
    @functools.wraps(func)
    def wrapper(
        *args: Any,
        verbose: int,
        quiet: int,
        log_format: str,
        output_format: str,
        termination_log: Path | None,
        pushgateway: str | None = None,
        **kwargs: Any,
    ) -> None:
        logs.configure(verbose - quiet, log_format)
        started = time.time()
        started_at = now_utc()  # the journal's clock, ISO 8601 like the rest of the volume
        ran: dict[str, Any] = {}  # the summary and the error, once there are any
        code = EXIT_UNEXPECTED
        try:
            code = _run(func, args, kwargs, text, payload, output_format, verbose, ran)
        except SystemExit as exit_:  # SIGTERM (see job.cli.main)
            code = exit_.code if isinstance(exit_.code, int) else EXIT_UNEXPECTED
            raise
        except click.ClickException as exc:
            code = exc.exit_code
            raise
        finally:  # the hooks at every run's end, success or failure: one call each
            _journal(journal, kwargs, started_at, code, ran.get("error"), ran.get("summary"))
            if pushgateway:
                shard = kwargs.get("shard_index") if kwargs.get("shards", 1) > 1 else None
                push_metrics(pushgateway, code, started, ran.get("summary"), shard)
        if code:  # the error's one line last, after any warning of the hooks
            fail(code, ran["error"], termination_log, ran.get("summary"))
        if termination_log is not None:
            write_termination_log(termination_log, ran["summary"])
        # Only a success gets here; the metrics are already pushed, so a slow hook (the
        # report page) does not count in the run's duration.
        if after is not None:
            after(ran["summary"], kwargs)

    return wrapper


def push_metrics(
    url: str, code: int, started: float, summary: Mapping[str, Any] | None, shard: int | None
) -> None:
    """The run's metrics to the Pushgateway (job.metrics). Whatever goes wrong here costs a
    warning: it runs on the way out of every run, also while its exit code is raised."""
    try:
        from job import metrics  # only when pushing: its imports cost ~30 ms

        run = metrics.RunEnd(command_name(), code, started, time.time(), summary, shard)
        metrics.push(url, run)
    except Exception as exc:  # noqa: BLE001 - monitoring never changes a run's outcome
        logger.warning("metrics not pushed to %s: %r", url, exc)


def command_name() -> str:
    """The running subcommand as one word: ``train``, ``models-promote``."""
    names = []
    ctx: click.Context | None = click.get_current_context()
    while ctx is not None and ctx.parent is not None:
        names.append(ctx.info_name or "")
        ctx = ctx.parent
    return "-".join(reversed(names))


def _run(
    func: Body,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    text: TextRenderer,
    payload: JsonPayload | None,
    output_format: str,
    verbose: int,
    ran: dict[str, Any],
) -> int:
    """Run the command body and print its summary; return the exit code (0, or its error's)
    and leave in ``ran`` what the run's end needs: its summary, its error. The error's line
    is printed by the caller, after the hooks at the run's end."""
    try:
        summary = func(*args, **kwargs)
    except InputsRejectedError as exc:  # the rest of the run was done: report it too
        ran.update(summary=exc.summary, error=str(exc))
        click.echo(
            json.dumps(exc.summary, default=str) if output_format == "json" else text(exc.summary)
        )
        return exc.exit_code
    except TaxiJobError as exc:
        if verbose > 0:
            logger.debug("details", exc_info=True)
        ran["error"] = str(exc)
        return exc.exit_code
    except click.ClickException as exc:
        ran["error"] = exc.format_message()
        raise
    except Exception as exc:  # a bug: still one line, the traceback only with -v
        logger.debug("details", exc_info=True)
        ran["error"] = f"unexpected error: {exc!r}"
        return EXIT_UNEXPECTED
    ran["summary"] = summary
    if output_format == "json":
        click.echo(json.dumps(summary if payload is None else payload(summary), default=str))
    else:
        click.echo(text(summary))
    return 0


def fail(
    code: int,
    message: str,
    termination_log: Path | None,
    summary: Mapping[str, Any] | None = None,
) -> None:
    """Exit with ``code`` after one line on stderr (and in the termination log, after what
    the run did, if it did something)."""
    if termination_log is not None:
        write_termination_log(
            termination_log, {**(summary or {}), "error": message, "exit_code": code}
        )
    click.echo(f"taxi-job: error: {message}", err=True)
    sys.exit(code)
