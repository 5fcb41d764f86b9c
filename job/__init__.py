"""taxi-job: the NYC-taxi trip-duration model, trained and served as Kubernetes Jobs."""

from __future__ import annotations

__version__ = "0.1.0"
