"""``taxi-job report``: the model report page, from the volume alone."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from job.cli.options import artifacts_option, common_options, option, reporting


@click.command("report")
@artifacts_option
@option(
    "--output",
    required=True,
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    help="The HTML file to write ('-': stdout, framed for `taxi-job launch report`).",
)
@option(
    "--rejected",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where infer sets bad inputs aside.  [default: ARTIFACTS/../data/rejected]",
)
@option(
    "--open/--no-open",
    "open_",
    default=False,
    help="Open the page in a browser once written.",
)
@common_options
@reporting
def report(artifacts: Path, output: Path, rejected: Path | None, open_: bool) -> Mapping[str, Any]:
    """Write one self-contained HTML page: model history, live error, drift, recent runs."""
    from job import report as report_

    if not artifacts.is_dir():
        from job.errors import BadInputError

        raise BadInputError(f"{artifacts}: no such artifacts folder")
    if str(output) == "-":
        from job.report import transport

        html = report_.build(artifacts, rejected)
        transport.emit(html)
        return {"output": "-", "bytes": len(html.encode()), "artifacts": str(artifacts)}
    summary = report_.write(artifacts, output, rejected)
    if open_:
        import webbrowser

        webbrowser.open(output.resolve().as_uri())
    return summary
