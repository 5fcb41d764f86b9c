"""``sample-data`` and ``fetch``: trip data for people with none, and the real months."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from job import fetch as fetching
from job import sample
from job.cli.options import common_options, option, pushgateway_option, reporting
from job.envvars import envvar


def check_month(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """Accept only a real month written ``YYYY-MM``."""
    try:
        sample.parse_month(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None
    return value


def check_months(ctx: click.Context, param: click.Parameter, value: str) -> list[str]:
    """Accept a month ``YYYY-MM`` or a range of them, ``YYYY-MM..YYYY-MM``."""
    try:
        return sample.month_range(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


month_option = option(
    "--month",
    metavar="YYYY-MM",
    required=True,
    callback=check_month,
    help="The month of trips, e.g. 2021-01.",
)


@click.command("sample-data")
@option(
    "--month",
    "--months",
    "months",
    metavar="YYYY-MM[..YYYY-MM]",
    required=True,
    callback=check_months,
    help="The month of trips, e.g. 2021-01, or a range of months, e.g. 2021-01..2021-12.",
)
@option(
    "--rows",
    type=click.IntRange(min=0),
    default=100_000,
    show_default=True,
    help="How many trips to write (per month).",
)
@option(
    "--seed",
    type=click.IntRange(min=0),
    default=None,
    show_default="from the month",
    help="Random seed; the same seed and month give the same file.",
)
@click.argument(
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    envvar=envvar("out"),
)
@pushgateway_option
@common_options
@reporting
def sample_data(months: list[str], rows: int, seed: int | None, out: Path) -> dict[str, Any]:
    """Write synthetic trips of a month to OUT/yellow_tripdata_<month>.parquet (TLC 2021 schema).

    OUT (env TAXI_JOB_OUT) is a directory, created if missing. A range of months writes
    one file per month.
    """
    results = [sample.write_sample(month, rows, out, seed) for month in months]
    if len(results) == 1:
        (result,) = results
        return {
            "path": str(result.path),
            "rows": result.rows,
            "month": result.month,
            "seed": result.seed,
        }
    return {
        "paths": [str(r.path) for r in results],
        "rows": sum(r.rows for r in results),
        "months": f"{months[0]}..{months[-1]}",
        "seeds": [r.seed for r in results],
    }


@click.command("fetch")
@month_option
@option(
    "--base-url",
    default=fetching.DEFAULT_BASE_URL,
    show_default=True,
    help="Where the monthly files are: {base-url}/yellow_tripdata_<month>.parquet.",
)
@option(
    "--retries",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="Attempts after the first on connection errors, 429 and 5xx.",
)
@option(
    "--backoff",
    type=click.FloatRange(min=0.0),
    default=1.0,
    show_default=True,
    help="Seconds before the first retry; doubled for each next one.",
)
@option(
    "--request-timeout",
    "timeout",
    type=click.FloatRange(min=0.0, min_open=True),
    default=60.0,
    show_default=True,
    help="Seconds without data before an attempt gives up.",
)
@click.argument(
    "directory",
    metavar="DIR",
    type=click.Path(file_okay=False, path_type=Path),
    envvar=envvar("dir"),
)
@pushgateway_option
@common_options
@reporting
def fetch(
    month: str, base_url: str, retries: int, backoff: float, timeout: float, directory: Path
) -> dict[str, Any]:
    """Download a month of the TLC's yellow-taxi trips into DIR, whole or not at all.

    DIR (env TAXI_JOB_DIR) is created if missing. A file already there with the server's
    size is kept.
    """
    result = fetching.fetch_month(month, directory, base_url, retries, backoff, timeout)
    return {
        "path": str(result.path),
        "bytes": result.bytes,
        "url": result.url,
        "skipped": result.skipped,
    }
