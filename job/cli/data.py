"""Placeholder: being written."""

from __future__ import annotations

import click


@click.command("fetch")
def fetch() -> None:
    """Not written yet."""
    raise NotImplementedError


@click.command("sample-data")
def sample_data() -> None:
    """Not written yet."""
    raise NotImplementedError
