"""The ``taxi-job`` command line: a thin layer that parses options and calls the domain."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import signal
import sys
from types import FrameType
from typing import NoReturn

import click

from job import __version__

#: Each command's module is imported only when that command runs (click's lazy-loading
#: pattern): `taxi-job infer`, started every minute, does not load the Kubernetes client,
#: the HTTP downloader or the sample generator.
COMMANDS = {
    "train": "job.cli.pipeline:train",
    "infer": "job.cli.pipeline:infer",
    "sample-data": "job.cli.data:sample_data",
    "fetch": "job.cli.data:fetch",
    "launch": "job.cli.cluster:launch",
    "runs": "job.cli.cluster:runs",
    "models": "job.cli.models:models",
    "report": "job.cli.report:report",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module, name = COMMANDS[cmd_name].split(":")
        command = getattr(importlib.import_module(module), name)
        assert isinstance(command, click.Command)
        return command


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="taxi-job")
def cli() -> None:
    """Train and serve the NYC-taxi trip-duration model, as scheduled or ad-hoc Jobs."""


def all_commands() -> dict[str, click.Command]:
    """Every subcommand, imported: for introspection (tests, documentation)."""
    ctx = click.Context(cli)
    return {
        name: command for name in cli.list_commands(ctx) if (command := cli.get_command(ctx, name))
    }


def main() -> NoReturn:
    """Console-script entry point."""
    # The only BLAS call is one solve of a few hundred unknowns: one thread is plenty, and
    # starting OpenBLAS's thread pool when numpy loads costs ~40 ms, every minute for
    # `infer`. A value set by the user wins.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    # In a container this process is pid 1, for which the kernel ignores a signal that has
    # no handler: without one, a pod being deleted (kubectl delete, a drain, the Job's
    # deadline) runs on for its grace period and is killed without cleaning up its
    # temporaries and claims. With it, SIGTERM unwinds the command like an error would.
    signal.signal(signal.SIGTERM, _terminated)
    try:
        cli(prog_name="taxi-job")
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    # Everything the command wrote is closed and synced by now; tearing down numpy,
    # pyarrow and their thread pools only costs time (~20 ms, a tenth of a run), so end
    # the process after flushing what is buffered.
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError):  # a reader that left early (| head): nothing to do
            stream.flush()
    os._exit(code)


def _terminated(signum: int, frame: FrameType | None) -> None:
    signal.signal(signum, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
    print(f"taxi-job: stopped by {signal.Signals(signum).name}", file=sys.stderr)
    raise SystemExit(128 + signum)
