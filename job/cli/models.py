"""``taxi-job models``: list, show, promote (roll back), prune, and the promotion history.

Thin commands over :mod:`job.registry`. Exit codes: 2 for a version that does not exist,
3 for one that fails its checksum, 75 while another training or promotion holds the lock.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from job import registry
from job.cli.options import (
    artifacts_option,
    common_options,
    lock_timeout_option,
    option,
    pushgateway_option,
    render_columns,
    render_text,
    reporting,
)


def _score(value: Any) -> str | None:
    return f"{value:.4f}" if isinstance(value, int | float) else None


def render_list(summary: Mapping[str, Any]) -> str:
    versions = summary["versions"]
    if not versions:
        return f"no model versions in {summary['artifacts']}"
    rows = [
        (
            v["version"],
            v["status"] + ("" if v["verified"] else " (CORRUPT)"),
            v["created"],
            _score(v["rmse_train"]),
            _score(v["rmse_eval"]),
            v["rows"],
            ", ".join(str(u) for u in v["train_inputs"]) or None,
        )
        for v in versions
    ]
    header = ("VERSION", "STATUS", "CREATED", "RMSE TRAIN", "RMSE EVAL", "ROWS", "TRAINED ON")
    return render_columns(header, rows)


def render_history(summary: Mapping[str, Any]) -> str:
    entries = summary["history"]
    if not entries:
        return f"no promotion yet in {summary['artifacts']}"
    rows = [registry.history_row(e) for e in entries]
    return render_columns(("TIME (UTC)", "CAUSE", "VERSION", "PREVIOUS", "BY", "REASON"), rows)


def render_show(summary: Mapping[str, Any]) -> str:
    """Scalars as ``key: value`` lines, nested metadata (metrics, inputs, gate) as JSON."""
    flat = {
        k: json.dumps(v, default=str) if isinstance(v, dict | list) else v
        for k, v in summary.items()
    }
    return render_text(flat)


#: How each subcommand's summary reads as text: also used by ``taxi-job launch models``.
RENDERERS = {
    "list": render_list,
    "history": render_history,
    "show": render_show,
    "promote": render_text,
    "prune": render_text,
}


#: What ``list`` and ``history`` print with ``--output-format json``: their summary's list.
LISTS = {"list": "versions", "history": "history"}


def launch_args(args: Sequence[str]) -> list[str]:
    """The container arguments of ``taxi-job launch models ARGS``; a usage error for a
    subcommand that does not exist (before any Job is made)."""
    if not args or args[0] not in RENDERERS:
        got = f" (got {args[0]!r})" if args else ""
        raise click.UsageError(
            f"launch models needs a models command{got}: one of {', '.join(RENDERERS)}, "
            "e.g. `taxi-job launch models promote VERSION --reason TEXT`"
        )
    return ["models", *args]


def result_of(lines: Sequence[str], fallback: Mapping[str, Any]) -> Any:
    """A launched models command's result: the JSON its pod printed last on stdout (the
    ConfigMap sets ``--output-format json``), else (no log) its termination message. The
    pod's log lines are JSON too, but carry ``logger`` and ``level``."""
    for line in reversed(lines):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, list) or (
            isinstance(value, dict) and not {"logger", "level"} <= value.keys()
        ):
            return value
    for key in LISTS.values():
        if isinstance(fallback.get(key), list):
            return fallback[key]
    return dict(fallback)


def render_result(args: Sequence[str], result: Any) -> str:
    """A launched models command's result, as the command prints it on a laptop."""
    command = args[0] if args else ""
    if command in LISTS and isinstance(result, list):
        return RENDERERS[command]({LISTS[command]: result, "artifacts": "the volume"})
    if isinstance(result, Mapping) and result and command in RENDERERS:
        return RENDERERS[command](result)
    return json.dumps(result, default=str)


@click.group("models")
def models() -> None:
    """See the model versions, compare them, roll back, and delete old ones."""


@models.command("list")
@artifacts_option
@common_options
@reporting(text=render_list, payload=lambda s: s[LISTS["list"]])
def list_(artifacts: Path) -> Mapping[str, Any]:
    """Every model version, newest first, with its status and scores."""
    return {"artifacts": str(artifacts), "versions": registry.list_versions(artifacts)}


@models.command("show")
@click.argument("version", default="current")
@artifacts_option
@common_options
@reporting(text=render_show)
def show(version: str, artifacts: Path) -> Mapping[str, Any]:
    """The whole metadata of a version (VERSION, or `current`), verified."""
    return registry.show(artifacts, version)


@models.command("promote")
@click.argument("version")
@artifacts_option
@option("--reason", default=None, metavar="TEXT", help="Why, for the promotion history.")
@option(
    "--by",
    default=None,
    metavar="NAME",
    help="Who, for the promotion history.  [default: user@host]",
)
@lock_timeout_option
@pushgateway_option
@common_options
@reporting(journal="models promote")
def promote(
    version: str, artifacts: Path, reason: str | None, by: str | None, lock_timeout: float
) -> Mapping[str, Any]:
    """Make a version current (an older one: a rollback); it is verified first."""
    return registry.promote(artifacts, version, reason=reason, by=by, lock_timeout=lock_timeout)


@models.command("prune")
@artifacts_option
@option(
    "--keep",
    type=click.IntRange(min=1),
    required=True,
    metavar="N",
    help="Keep the newest N versions, and always the current one and the one it replaced.",
)
@lock_timeout_option
@pushgateway_option
@common_options
@reporting(journal="models prune")
def prune(artifacts: Path, keep: int, lock_timeout: float) -> Mapping[str, Any]:
    """Delete old model versions (each one atomically)."""
    return registry.prune(artifacts, keep, lock_timeout)


@models.command("history")
@artifacts_option
@common_options
@reporting(text=render_history, payload=lambda s: s[LISTS["history"]])
def history(artifacts: Path) -> Mapping[str, Any]:
    """Every change of the current version, newest first: trainings, promotions, rollbacks."""
    entries = list(reversed(registry.read_history(registry.existing_store(artifacts))))
    return {"artifacts": str(artifacts), "history": entries}
