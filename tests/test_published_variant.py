"""The "2024 release" variant against the published code itself.

The oracle is tests/published_oracle.py: the reference dataset's published steps (odc-stac's load and
fusing, xarray's yearly mean, the notebook's pandas join, its pooled rows, scikit-learn's
LinearRegression, exactextract on the result) run in their own virtual environment with the
libraries of November 2025 (tests/published_requirements.txt) — nothing of the plugin. The plugin
(cloudfrequency with OBSERVATIONS=1, smoothprobability with METHOD=2, zonalstatistics) must equal
it to 1e-3 per pixel and per area statistic, on generated rasters, on the sample archive and on a
real-data series (68 real dates).
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import BUILD, ROOT

PUBLISHED_VENV = BUILD / "published-venv"
REQUIREMENTS = ROOT / "tests" / "published_requirements.txt"
ORACLE = ROOT / "tests" / "published_oracle.py"
TOL = 1e-3
STATS = ["mean", "median", "min", "max", "stdev"]


@pytest.fixture(scope="session")
def published_python() -> Path:
    """The oracle's interpreter, its venv made (or remade when the requirements change) on first use."""
    python = PUBLISHED_VENV / "bin" / "python"
    stamp = PUBLISHED_VENV / "requirements.txt"
    wanted = REQUIREMENTS.read_text()
    if not (python.exists() and stamp.exists() and stamp.read_text() == wanted):
        subprocess.run(["/usr/bin/python3", "-m", "venv", "--clear", str(PUBLISHED_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r",
                        str(REQUIREMENTS)], check=True)
        stamp.write_text(wanted)
    return python


def oracle(python: Path, *args) -> str:
    done = subprocess.run([str(python), str(ORACLE), *map(str, args)], capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def write_counts(folder: Path, p: np.ndarray, n: np.ndarray, x0=530_000.0, y1=180_000.0, res=20.0):
    """cloudfrequency's two count rasters (valid uint16, cloudy float32 = Σ p/100) for p (%) and n."""
    from rasterio.transform import from_origin

    profile = dict(driver="GTiff", width=p.shape[1], height=p.shape[0], count=1, crs="EPSG:27700",
                   transform=from_origin(x0, y1, res, res))
    valid, cloudy = folder / "valid.tif", folder / "cloudy.tif"
    with rasterio.open(valid, "w", dtype="uint16", **profile) as ds:
        ds.write(n.astype(np.uint16)[None])
    with rasterio.open(cloudy, "w", dtype="float32", **profile) as ds:
        ds.write((np.where(n > 0, p, 0) * n / 100.0).astype(np.float32)[None])
    return cloudy, valid


def two_band(folder: Path, p: np.ndarray, n: np.ndarray, transform) -> Path:
    """The published code's composite raster for given p and n: band 1 p (NaN where n = 0), band 2 n."""
    path = folder / "two_band.tif"
    with rasterio.open(path, "w", driver="GTiff", width=p.shape[1], height=p.shape[0], count=2, dtype="float32",
                       crs="EPSG:27700", transform=transform) as ds:
        ds.write(np.stack([np.where(n > 0, p, np.nan), n]).astype(np.float32))
    return path


def read(path) -> np.ndarray:
    with rasterio.open(path) as ds:
        a = ds.read(1).astype(np.float64)
        return np.where(a == ds.nodata, np.nan, a) if ds.nodata is not None else a


def zones_gpkg(folder: Path, bounds, count: int, seed: int) -> Path:
    """``count`` polygons (boxes and triangles, partly off the grid's cells) inside ``bounds``, id field ``code``."""
    import geopandas as gpd
    from shapely.geometry import Polygon, box

    rng = np.random.default_rng(seed)
    xmin, ymin, xmax, ymax = bounds
    shapes = []
    for k in range(count):
        w, h = rng.uniform(60, 400, 2)
        x, y = rng.uniform(xmin, xmax - w), rng.uniform(ymin, ymax - h)
        shapes.append(box(x, y, x + w, y + h) if k % 2 else Polygon([(x, y), (x + w, y), (x + w / 3, y + h)]))
    path = folder / "zones.gpkg"
    gpd.GeoDataFrame({"code": [f"Z{k:04d}" for k in range(count)]}, geometry=shapes,
                     crs="EPSG:27700").to_file(path, layer="zones", driver="GPKG")
    return path


def compare_pixels(ours: np.ndarray, npz, band: int, transform):
    """Our raster against the oracle's rows of one band, matched by cell centre coordinates."""
    values, xs, ys = npz["values"][band], npz["x"], npz["y"]
    cols = np.rint((xs - transform.c) / transform.a - 0.5).astype(int)
    rows = np.rint((ys - transform.f) / transform.e - 0.5).astype(int)
    theirs = np.full(ours.shape, np.nan)
    theirs[np.ix_(rows, cols)] = values
    assert np.array_equal(np.isnan(ours), np.isnan(theirs)), "no data in different places"
    ok = ~np.isnan(ours)
    diff = np.abs(ours[ok] - theirs[ok])
    assert diff.max() <= TOL, f"band {band + 1}: max |Δ| {diff.max():.3g} at {np.count_nonzero(diff > TOL)} pixels"
    return diff.max()


def compare_tables(ours, theirs_csv: Path, id_field: str = "code"):
    import pandas as pd

    theirs = pd.read_csv(theirs_csv).set_index(id_field)
    ours = ours.set_index(id_field).loc[theirs.index]
    worst = {}
    for prefix in ("probability", "acquisition_count"):
        for stat in STATS:
            column = f"{prefix}_{stat}"
            a, b = ours[column].to_numpy(float), theirs[column].to_numpy(float)
            assert np.array_equal(np.isnan(a), np.isnan(b)), column
            diff = np.abs(a - b)[~np.isnan(a)]
            worst[column] = float(diff.max()) if len(diff) else 0.0
            assert worst[column] <= TOL, f"{column}: max |Δ| {worst[column]:.3g}"
    return worst


def field(shape, seed):
    """A smooth cloud probability field (%), strictly positive, with a few outliers: what the
    deviation threshold acts on."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    p = 20 + 60 * gaussian_filter(rng.random(shape), 6) + rng.normal(0, 1.5, shape)
    p[rng.random(shape) < 0.02] *= 1.6
    return np.clip(p, 0.5, 99.5)


def test_adjustment_and_table_equal_the_published_code(tmp_path, published_python):
    from cloud_probability.core.smoothing import published_adjustment
    from cloud_probability.core.zonal import zonal_statistics
    import geopandas as gpd

    shape = (83, 117)
    rng = np.random.default_rng(7)
    p = field(shape, 7)
    n = rng.integers(1, 60, shape)
    n[:, 40:44] += 50  # an orbit overlap: twice the observations in a band
    cloudy, valid = write_counts(tmp_path, p, n)
    with rasterio.open(valid) as ds:
        transform, bounds = ds.transform, tuple(ds.bounds)
    # the published code reads the two-band raster made from the same counts
    src = two_band(tmp_path, 100.0 * read(cloudy) / n, n, transform)
    zones = zones_gpkg(tmp_path, bounds, 40, 7)
    oracle(published_python, "adjust", src, zones, "zones", "code", tmp_path / "oracle.npz", tmp_path / "oracle.csv")
    npz = np.load(tmp_path / "oracle.npz")

    out = {k: tmp_path / f"{k}.tif" for k in ("lag", "adjusted", "adjusted_count")}
    fit = published_adjustment(str(cloudy), str(valid), str(out["lag"]), str(out["adjusted"]),
                               str(out["adjusted_count"]), size=21, threshold_pct=5.0, memory_mb=1.0)
    assert abs(fit.median_deviation_pct - float(npz["median"])) <= 1e-4 * max(1.0, abs(fit.median_deviation_pct))
    assert fit.slope == pytest.approx(float(npz["slope"]), rel=1e-4)
    assert fit.intercept == pytest.approx(float(npz["intercept"]), rel=1e-4)
    assert fit.pixels == 2 * n.size and fit.rows_left_out == 0
    compare_pixels(read(out["adjusted"]), npz, 0, transform)
    compare_pixels(read(out["adjusted_count"]), npz, 1, transform)

    table = zonal_statistics(str(out["adjusted"]), gpd.read_file(zones, layer="zones"), "code",
                             valid_path=str(out["adjusted_count"])).table
    compare_tables(table, tmp_path / "oracle.csv")
