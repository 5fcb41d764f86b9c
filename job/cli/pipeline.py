"""``taxi-job train`` and ``taxi-job infer``: parse, then call the domain function."""

from __future__ import annotations

from collections.abc import Mapping
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
    render_text,
    reporting,
)
from job.errors import BadInputError


def render_infer(summary: Mapping[str, Any]) -> str:
    """An infer summary as text, without its per-input records (one line each would bury
    the run's figures; ``--output-format json`` has them)."""
    return render_text({k: v for k, v in summary.items() if k != "input_records"})


shards_option = option(
    "--shards",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="How many processes (an Indexed Job's pods) share the work.",
)
shard_index_option = option(
    "--shard-index",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="This process's share, 0 to SHARDS-1 (on Kubernetes: JOB_COMPLETION_INDEX).",
)


def _require_shard_index(shards: int) -> None:
    """With --shards above 1 the index must be given (flag or environment), not defaulted:
    a Job that is not Indexed would otherwise run shard 0 alone, and a training would wait
    for shards that never come (nothing published, exit 0), an inference would predict a
    share of the inputs."""
    source = click.get_current_context().get_parameter_source("shard_index")
    if shards > 1 and source is click.core.ParameterSource.DEFAULT:
        raise BadInputError(
            f"--shards {shards} needs --shard-index (TAXI_JOB_SHARD_INDEX): every process "
            "must know its share; on Kubernetes an Indexed Job gives it (components/scale-out)"
        )


def refresh_report(summary: Mapping[str, Any], options: Mapping[str, Any]) -> None:
    """With ``--report-page``, after a training that published a model, the report page on
    the volume (``ARTIFACTS/report.html``) is drawn again, for those who serve the folder.
    Best effort: a page that cannot be written is a warning, never a failed training."""
    if not options.get("report_page"):
        return
    if summary.get("model_version") and isinstance(options.get("artifacts"), Path):
        from job import report

        report.refresh(options["artifacts"])


@click.command("train")
@option(
    "--train-data",
    required=True,
    metavar="SRC",
    help="Training trips: parquet file, directory or glob; local path or URL.",
)
@option(
    "--eval-data",
    required=True,
    metavar="SRC",
    help="Evaluation trips (usually the next month), same forms.",
)
@artifacts_option
@option(
    "--min-duration",
    type=float,
    default=1.0,
    show_default=True,
    help="Shortest trip kept, minutes (inclusive).",
)
@option(
    "--max-duration",
    type=float,
    default=60.0,
    show_default=True,
    help="Longest trip kept, minutes (inclusive).",
)
@lock_timeout_option
@option(
    "--promote",
    type=click.Choice(registry.POLICIES),
    default="gate",
    show_default=True,
    help="gate: make the new model current only if its evaluation RMSE is within the "
    "tolerance of the current model's on the same rows; always; never (a candidate, for "
    "`taxi-job models promote`).",
)
@option(
    "--promotion-tolerance",
    type=click.FloatRange(min=0),
    default=0.01,
    show_default=True,
    help="How much worse (relative RMSE) the new model may be and still be promoted.",
)
@option(
    "--keep-versions",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Delete older versions beyond this many after publishing (never the current "
    "one nor the one it replaced).",
)
@shards_option
@shard_index_option
@option(
    "--run-id",
    default=None,
    metavar="ID",
    help="The training all shards belong to (on Kubernetes: the Job's name); with --shards>1.",
)
@pushgateway_option
@option(
    "--report-page/--no-report-page",
    default=False,
    show_default=True,
    help="After publishing, draw the report page ARTIFACTS/report.html (taxi-job report; "
    "about a second, after the summary; a failure is only a warning).",
)
@common_options
@reporting(journal="train", after=refresh_report)
def train(**options: Any) -> dict[str, Any]:
    """Fit the duration model, publish it, and make it current if it passes the gate."""
    options.pop("report_page")  # for refresh_report, after the run
    _require_shard_index(options["shards"])
    # Each command imports only its own domain modules: `train` does not load infer's queue
    # and publishing, `infer` (every minute) not the training, the shards or the gate.
    from job import mapreduce, pipeline

    config = pipeline.TrainConfig(**options)
    if config.shards == 1:
        return pipeline.train(config)
    return mapreduce.train_shard(config)


@click.command("infer")
@option(
    "--input",
    "input",
    required=True,
    metavar="SRC",
    help="Trips to predict: parquet file, directory or glob; local path or URL.",
)
@artifacts_option
@option(
    "--predictions",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where predictions go.  [default: ARTIFACTS/predictions]",
)
@option(
    "--force/--no-force",
    default=False,
    help="Predict again inputs that the current model has predicted already.",
)
@option(
    "--settle-seconds",
    "settle_s",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="An input of a folder or glob that cannot be read and changed less than this "
    "ago (its change time) may still be being copied in: it is left for a later run, "
    "not set aside.",
)
@option(
    "--budget-seconds",
    "budget_s",
    type=click.FloatRange(min=0),
    default=None,
    help="Start no new input after this many seconds; the rest, newest last, is left "
    "for the next run.  [default: no limit]",
)
@shards_option
@shard_index_option
@pushgateway_option
@common_options
@reporting(text=render_infer, journal="infer")
def infer(**options: Any) -> dict[str, Any]:
    """Predict trip durations of new input files with the current model."""
    _require_shard_index(options["shards"])
    from job import inference

    return inference.infer(inference.InferConfig(**options))
