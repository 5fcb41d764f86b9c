"""``taxi-job report``: one self-contained HTML page about the models, built only from the
volume (:mod:`job.report.volume`), drawn with matplotlib (:mod:`job.report.charts`) and
laid out by :mod:`job.report.page`.

Importing this package loads neither matplotlib nor numpy: the charts are imported when a
page is drawn.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

from job import volume as shared_volume
from job.report import page
from job.report.volume import read

logger = logging.getLogger(__name__)

#: The page a training leaves on the volume, for those who serve the folder.
PAGE = "report.html"


def build(root: Path, rejected: Path | None = None, now: dt.datetime | None = None) -> str:
    """The report of the artifacts folder ``root`` as HTML."""
    from job.report import charts

    snapshot = read(root, rejected, now)
    count = iter(range(1, 1000))

    def draw(name: str, *args: Any, title: str) -> str:
        fig = getattr(charts, name)(*args)
        return charts.to_svg(fig, f"c{next(count)}", title)

    return page.render(snapshot, draw)


def write(root: Path, output: Path, rejected: Path | None = None) -> dict[str, Any]:
    """Write the report of ``root`` to ``output`` atomically; return what was written."""
    html = build(root, rejected)
    data = html.encode()
    with shared_volume.writing("the report", output):
        output.parent.mkdir(parents=True, exist_ok=True)
        shared_volume.write_atomic(output, data)
    return {"output": str(output), "bytes": len(data), "artifacts": str(root)}


def refresh(root: Path) -> None:
    """Rewrite ``<root>/report.html`` (after a training). Best effort: any failure is one
    warning, the training's result stands."""
    try:
        write(root, root / PAGE)
    except Exception as exc:  # noqa: BLE001 - a page must never fail a training
        logger.warning("could not refresh the report %s: %s", root / PAGE, exc)
