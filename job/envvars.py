"""How an option of the command line is spelled as an environment variable: ``--train-data``
is ``TAXI_JOB_TRAIN_DATA``. The CLI reads them (a CronJob sets them from a ConfigMap), and
the launcher writes them into a Job for ``--set``."""

from __future__ import annotations

#: The prefix of every variable the command line reads.
ENV_PREFIX = "TAXI_JOB_"


def envvar(option: str) -> str:
    """``train-data``, ``train_data`` or ``TAXI_JOB_TRAIN_DATA``: ``TAXI_JOB_TRAIN_DATA``."""
    name = option.upper().replace("-", "_")
    return name if name.startswith(ENV_PREFIX) else ENV_PREFIX + name


def option_of(name: str) -> str:
    """``TAXI_JOB_TRAIN_DATA``: ``train-data``, the option's long name without dashes."""
    return name.removeprefix(ENV_PREFIX).lower().replace("_", "-")
