"""core.rasters, the one GeoTIFF writer: its no-data values, its atomic write and its overview rule."""
from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from cloud_probability.core.rasters import NODATA, atomic, geotiff_profile, overview_factors, write_raster
from cloud_probability.core.reading import Grid


def grid(rows, cols):
    return Grid("EPSG:27700", from_origin(500_000, 200_000, 20, 20), (rows, cols))


def test_one_nodata_per_data_type_and_the_profile_of_each():
    assert NODATA == {"uint8": 255, "uint16": 0, "float32": -9999.0}
    from cloud_probability.core import frequency, masks, smoothing

    assert masks.NODATA == 255 and smoothing.NODATA == frequency.PROBABILITY_NODATA == -9999.0
    with pytest.raises(ValueError, match="no data of uint8 rasters is 255, not 0"):
        geotiff_profile(grid(10, 10), "uint8", nodata=0)
    small, large = geotiff_profile(grid(255, 900), "float32", nodata=-9999.0), geotiff_profile(grid(256, 256), "uint16")
    assert "tiled" not in small and small["predictor"] == 3 and small["nodata"] == -9999.0
    assert large["tiled"] and large["blockxsize"] == 256 and large["predictor"] == 2 and "nodata" not in large


def test_a_failed_write_leaves_nothing_and_a_finished_one_only_the_output(tmp_path):
    out = tmp_path / "out.tif"
    with pytest.raises(RuntimeError):
        with atomic(out) as tmp, rasterio.open(tmp, "w", **geotiff_profile(grid(4, 4), "uint8", nodata=255)) as ds:
            ds.write(np.ones((1, 4, 4), np.uint8))
            raise RuntimeError("cancelled half way")
    assert list(tmp_path.iterdir()) == []
    write_raster(str(out), np.arange(16, dtype=np.uint8).reshape(4, 4), grid(4, 4), 255, tags={"what": "test"})
    assert [p.name for p in tmp_path.iterdir()] == ["out.tif"]
    with rasterio.open(out) as ds:
        assert ds.read(1)[3, 3] == 15 and ds.nodata == 255 and ds.tags()["what"] == "test"


def test_a_killed_runs_part_file_goes_when_the_output_is_written_again(tmp_path):
    out = tmp_path / "out.tif"
    dead = tmp_path / "out.tif.part-999999-1.tif"  # no process has this id
    dead.write_bytes(b"half a raster")
    write_raster(str(out), np.zeros((4, 4), np.float32), grid(4, 4), -9999.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tif"]


def test_the_overview_rule():
    assert overview_factors(4095, 60_000) == []
    assert overview_factors(4096, 4096) == [2, 4, 8, 16]
    assert overview_factors(35_000, 60_000) == [2, 4, 8, 16, 32, 64]
