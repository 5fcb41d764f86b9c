"""Placeholder: being written."""

from __future__ import annotations

import click


@click.command("train")
def train() -> None:
    """Not written yet."""
    raise NotImplementedError


@click.command("infer")
def infer() -> None:
    """Not written yet."""
    raise NotImplementedError
