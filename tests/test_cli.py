"""The reference chain from the command line, without QGIS (what cluster and HPC nodes run)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import rasterio
from conftest import BUILD, served_scenes


def test_the_command_line_makes_the_reference_product(sample_servers, sample_archive, tmp_path):
    from cloud_probability.core.frequency import cloud_frequency, grid_for_area
    from cloud_probability.core.masks import PRESETS
    from cloud_probability.core.smoothing import reference_adjustment

    x0, y0, x1, y1 = json.loads((sample_archive / "archive.json").read_text())["aoi_27700"]
    env = dict(os.environ, PYTHONPATH=str(BUILD / "plugins"))
    run = subprocess.run([
        sys.executable, "-m", "cloud_probability.core.cli", "--aoi", str(x0), str(y0), str(x1), str(y1),
        "--start", "2024-01-01", "--end", "2024-12-31", "--zones", str(sample_archive / "zones" / "small_areas.gpkg"),
        "--zone-id", "code", "--out", str(tmp_path / "out"), "--stac-url", sample_servers.stac.url,
        # no QGIS in that process: a plain interpreter, and nothing of qgis imported
        ], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "qgis" not in run.stderr.lower()
    rows = (tmp_path / "out" / "small_areas.csv").read_text().splitlines()
    assert len(rows) == 301 and rows[0].startswith("code,name,probability_mean")
    # the same chain through core in this process
    counts = {k: str(tmp_path / f"{k}.tif") for k in ("probability", "valid", "cloudy")}
    cloud_frequency(served_scenes(sample_servers), grid_for_area((x0, y0, x1, y1), "EPSG:27700", 20.0), PRESETS["scl"],
                    counts, measure="mean_probability", cache_dir=tmp_path / "c")
    reference_adjustment(counts["cloudy"], counts["valid"], str(tmp_path / "lag.tif"), str(tmp_path / "adj.tif"))
    np.testing.assert_array_equal(rasterio.open(tmp_path / "out" / "probability_adjusted.tif").read(),
                                  rasterio.open(tmp_path / "adj.tif").read())


def test_the_command_line_refuses_a_reversed_area(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(BUILD / "plugins"))
    run = subprocess.run([sys.executable, "-m", "cloud_probability.core.cli", "--aoi", "10", "0", "0", "10",
                          "--start", "2024-01-01", "--end", "2024-12-31", "--zones", "z.gpkg", "--zone-id", "code",
                          "--out", str(tmp_path)], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 2 and "XMIN < XMAX" in run.stderr
