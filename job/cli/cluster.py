"""Placeholder: being written."""

from __future__ import annotations

import click


@click.command("launch")
def launch() -> None:
    """Not written yet."""
    raise NotImplementedError


@click.command("runs")
def runs() -> None:
    """Not written yet."""
    raise NotImplementedError
