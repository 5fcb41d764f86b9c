"""The project's exceptions and the exit codes they map to.

The manifests rely on these numbers: a CronJob's ``podFailurePolicy`` fails the Job at
once on ``EXIT_BAD_INPUT`` and ``EXIT_NO_MODEL`` (retrying cannot help) and lets the
Job's ``backoffLimit`` retry ``EXIT_TRANSIENT`` and anything unexpected.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

EXIT_OK = 0
#: An unexpected error (a bug): retried by the Job, reported with a traceback at -v.
EXIT_UNEXPECTED = 1
#: Bad input or usage: a missing, unreadable or malformed file, a bad option (click's own).
EXIT_BAD_INPUT = 2
#: No usable model: none trained yet, or an artifact whose checksum does not match.
EXIT_NO_MODEL = 3
#: A failure that may pass: I/O or network after retries, the training lock is held.
EXIT_TRANSIENT = 75
#: Stopped by SIGTERM (128 + 15, job.cli.main's handler): the pod was deleted, drained or
#: is past its deadline; not the run's fault, so the Jobs do not count it either.
EXIT_STOPPED = 143


class TaxiJobError(Exception):
    """An expected failure: one clear line for the user and a documented exit code."""

    exit_code = EXIT_UNEXPECTED


class BadInputError(TaxiJobError):
    """An input file is missing, not parquet, truncated, or has the wrong columns or rows."""

    exit_code = EXIT_BAD_INPUT


class InputsRejectedError(BadInputError):
    """Some inputs of a run were bad and set aside; the run did the rest. Carries the
    run's summary, which is reported as for a run that succeeded."""

    def __init__(self, message: str, summary: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.summary = summary


class ModelUnavailableError(TaxiJobError):
    """There is no current model, or its artifacts fail verification."""

    exit_code = EXIT_NO_MODEL


class NoModelYetError(ModelUnavailableError):
    """No model is current yet (a fresh volume, before the first training)."""


class TransientError(TaxiJobError):
    """I/O or network trouble that survived our retries, or a busy lock: worth retrying later."""

    exit_code = EXIT_TRANSIENT
