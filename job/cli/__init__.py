"""The ``taxi-job`` command line: a thin layer that parses options and calls the domain."""

from __future__ import annotations

import click

from job import __version__
from job.cli.cluster import launch, runs
from job.cli.data import fetch, sample_data
from job.cli.pipeline import infer, train


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="taxi-job")
def cli() -> None:
    """Train and serve the NYC-taxi trip-duration model, as scheduled or ad-hoc Jobs."""


for command in (train, infer, sample_data, fetch, launch, runs):
    cli.add_command(command)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="taxi-job")
