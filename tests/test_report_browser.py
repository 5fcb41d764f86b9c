"""The report page in real headless Chromium (Debian's chromium and chromedriver, through
Selenium): no console error, no network request, every chart drawn with a size, no
horizontal scrolling on a laptop nor on a phone, and the status that the registry says.

Chromium on a shared machine is slow: one page, one browser per width, every check on it.
Without chromium these tests skip, except where TAXI_JOB_REQUIRE_TOOLS=1 (CI): there
they fail.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from browser import check_page, require_tools
from click.testing import CliRunner
from reportvolume import make_volume

from job import registry
from job.cli import cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def page(tmp_path_factory, make_trips_module) -> tuple[Path, Path]:
    """A volume with 30 versions (the oldest without records), 200 predicted inputs and a
    rejected input; its page."""
    tmp = tmp_path_factory.mktemp("report")
    jan, feb = make_trips_module(tmp)
    real = tmp / "real"
    CliRunner().invoke(
        cli,
        ["train", "--train-data", str(jan), "--eval-data", str(feb), "--artifacts", str(real)],
        catch_exceptions=False,
    )
    version = (real / "CURRENT").read_text().strip()
    weights = json.loads((real / "models" / version / "model.json").read_text())["model"]
    root = tmp / "volume" / "artifacts"
    make_volume(root, weights, versions=30, inputs=200, records_from=5)
    rejected = tmp / "volume" / "data" / "rejected"
    rejected.mkdir(parents=True)
    (rejected / "broken.parquet.json").write_text(
        json.dumps(
            {
                "input": "broken.parquet",
                "error": "broken.parquet: not a parquet file",
                "rejected_at": "2026-12-01T09:00:00Z",
                "moved_to": str(rejected / "broken.parquet"),
            }
        )
    )
    out = tmp / "report.html"
    result = CliRunner().invoke(
        cli, ["report", "--artifacts", str(root), "--output", str(out)], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    return root, out


@pytest.fixture(scope="module")
def make_trips_module():
    import pyarrow.parquet as pq
    from trips import random_trips, trips_table

    def make(folder: Path) -> tuple[Path, Path]:
        paths = []
        for name, seed in (("jan.parquet", 1), ("feb.parquet", 2)):
            pu, do, minutes = random_trips(3000, seed, 30)
            path = folder / name
            pq.write_table(trips_table(pu.tolist(), do.tolist(), minutes.tolist(), seed=seed), path)
            paths.append(path)
        return paths[0], paths[1]

    return make


@pytest.mark.parametrize("width", [1280, 390])
def test_the_page_in_chromium(page, width):
    root, out = page
    require_tools()
    status = check_page(out, width, charts=6)
    versions = registry.list_versions(root)
    current = next(v for v in versions if v["status"] == "current")
    assert status["current-version"] == current["version"]
    assert status["versions"] == str(len(versions))
    assert status["current-rmse"] == f"{current['rmse_eval']:.3f} min"
    assert status["rejected"] == "1"
