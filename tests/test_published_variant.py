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
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import BUILD, ROOT

PUBLISHED_VENV = BUILD / "published-venv"
# the oracle's interpreter: Debian's python3, or another where the pins below have no wheels for it
# (make test-matrix on Debian sid: Python 3.14, for which rasterio 1.4.3 has none; it uses 3.13)
PUBLISHED_PYTHON = os.environ.get("CLOUDPROB_PUBLISHED_PYTHON", "/usr/bin/python3")
REQUIREMENTS = ROOT / "tests" / "published_requirements.txt"
ORACLE = ROOT / "tests" / "published_oracle.py"
TOL = 1e-3
STATS = ["mean", "median", "min", "max", "stdev"]


@pytest.fixture(scope="session")
def published_python() -> Path:
    """The oracle's interpreter, its venv made (or remade when the requirements change) on first use."""
    python = PUBLISHED_VENV / "bin" / "python"
    stamp = PUBLISHED_VENV / "requirements.txt"
    wanted = REQUIREMENTS.read_text() + ("" if PUBLISHED_PYTHON == "/usr/bin/python3" else f"# {PUBLISHED_PYTHON}\n")
    if not (python.exists() and stamp.exists() and stamp.read_text() == wanted):
        subprocess.run([PUBLISHED_PYTHON, "-m", "venv", "--clear", str(PUBLISHED_VENV)], check=True)
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


def zones_gpkg(folder: Path, bounds, count: int, seed: int, crs: str = "EPSG:27700") -> Path:
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
                     crs=crs).to_file(path, layer="zones", driver="GPKG")
    return path


def compare_pixels(ours: np.ndarray, npz, band: int, transform, skip=None):
    """Our raster against the oracle's rows of one band, matched by cell centre coordinates (``skip``:
    pixels left out of the comparison)."""
    values, xs, ys = npz["values"][band], npz["x"], npz["y"]
    cols = np.rint((xs - transform.c) / transform.a - 0.5).astype(int)
    rows = np.rint((ys - transform.f) / transform.e - 0.5).astype(int)
    theirs = np.full(ours.shape, np.nan)
    theirs[np.ix_(rows, cols)] = values
    if skip is not None:
        theirs[skip] = np.nan
    assert np.array_equal(np.isnan(ours), np.isnan(theirs)), "no data in different places"
    ok = ~np.isnan(ours)
    diff = np.abs(ours[ok] - theirs[ok])
    assert diff.max() <= TOL, f"band {band + 1}: max |Δ| {diff.max():.3g} at {np.count_nonzero(diff > TOL)} pixels"
    return diff.max()


def compare_tables(ours, theirs_csv: Path, id_field: str = "code", skip=()):
    import pandas as pd

    theirs = pd.read_csv(theirs_csv, dtype={id_field: str}).set_index(id_field)
    theirs = theirs[~theirs.index.isin(list(skip))]
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


def _served_items(running, ids, path: Path) -> Path:
    features = json.loads((running.workdir / "served_items.json").read_text())["features"]
    chosen = [f for f in features if f["id"] in ids]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": chosen}))
    return path


def published_chain(tmp_path, running, published_python, aoi, epsg, zones, layer, id_field, start, end,
                    resolution=20):
    """Both pipelines on the same served scenes, grid and zones: (ours: dict of outputs, oracle folder)."""
    import geopandas as gpd
    from qgis import processing

    xmin, ymin, xmax, ymax = aoi
    extent = f"{xmin},{xmax},{ymin},{ymax} [EPSG:{epsg}]"
    processing.run("cloudprob:searchscenes", {
        "STAC_URL": running.stac.url, "COLLECTION": "sentinel-2-c1-l2a", "AOI": extent, "START_DATE": start,
        "END_DATE": end, "MAX_SCENE_CLOUD": 100, "OUTPUT": str(tmp_path / "scenes.gpkg")})
    freq = processing.run("cloudprob:cloudfrequency", {
        "SCENES": str(tmp_path / "scenes.gpkg"), "AOI": extent, "TARGET_CRS": f"EPSG:{epsg}", "RESOLUTION": resolution,
        "MEASURE": 1, "OBSERVATIONS": 1, "OUTPUT_PROBABILITY": str(tmp_path / "p.tif"),
        "OUTPUT_VALID": str(tmp_path / "n.tif"), "OUTPUT_CLOUDY": str(tmp_path / "cloudy.tif")})
    smooth = processing.run("cloudprob:smoothprobability", {
        "CLOUDY": freq["OUTPUT_CLOUDY"], "VALID": freq["OUTPUT_VALID"], "METHOD": 2, "KERNEL_SIZE": 21,
        "DEVIATION_THRESHOLD": 5.0, "OUTPUT_SMOOTHED": str(tmp_path / "lag.tif"),
        "OUTPUT_ADJUSTED": str(tmp_path / "adjusted.tif"), "OUTPUT_ADJUSTED_COUNT": str(tmp_path / "adjusted_count.tif")})
    zonal = processing.run("cloudprob:zonalstatistics", {
        "INPUT_RASTER": smooth["OUTPUT_ADJUSTED"], "VALID": smooth["OUTPUT_ADJUSTED_COUNT"],
        "ZONES": f"{zones}|layername={layer}", "ZONE_ID_FIELD": id_field,
        "OUTPUT": str(tmp_path / "areas.gpkg"), "OUTPUT_CSV": str(tmp_path / "areas.csv")})
    ids = set(gpd.read_file(tmp_path / "scenes.gpkg")["item_id"])
    epsg = int(epsg)
    items = _served_items(running, ids, tmp_path / "items.json")
    with rasterio.open(freq["OUTPUT_VALID"]) as ds:
        t, rows, cols = ds.transform, ds.height, ds.width
    oracle_dir = tmp_path / "oracle"
    oracle_dir.mkdir()
    oracle(published_python, "composite", items, epsg, ",".join(str(v) for v in tuple(t)[:6]), rows, cols,
           oracle_dir / "two_band.tif")
    oracle(published_python, "adjust", oracle_dir / "two_band.tif", zones, layer, id_field, oracle_dir / "adjusted.npz",
           oracle_dir / "table.csv")
    return dict(freq=freq, smooth=smooth, zonal=zonal, transform=t), oracle_dir


def check_chain(ours, oracle_dir, id_field, zones):
    """Our chain against the oracle's. odc-stac reads through GDAL's warper, whose nearest neighbour goes
    through an approximate transformer, where the plugin's lookup is exact: where an output cell's centre
    falls exactly on a source pixel's edge (in the sample archive, one cell: column fraction 0.0 in UTM 31)
    the two take the pixels on either side, and one observation differs. Those pixels (each off by one
    observation's whole percent, at most 1 in 5,000) and the areas that hold one are left out; the counts
    must be equal everywhere and everything else agree to 1e-3."""
    import geopandas as gpd
    import pandas as pd
    from shapely.geometry import box

    with rasterio.open(oracle_dir / "two_band.tif") as ds:
        their_p, their_n = ds.read(1).astype(np.float64), ds.read(2).astype(np.float64)
    n = read(ours["freq"]["OUTPUT_VALID"])
    p = 100.0 * read(ours["freq"]["OUTPUT_CLOUDY"]) / np.where(n > 0, n, np.nan)
    assert np.array_equal(n, their_n), f"counts differ at {np.count_nonzero(n != their_n)} pixels"
    assert np.array_equal(np.isnan(p), np.isnan(their_p))
    off = np.abs(p - their_p) > TOL
    one_observation = np.abs(p - their_p) * n
    assert np.all(np.abs(one_observation[off] - np.rint(one_observation[off])) < 1e-2), "not one observation's value"
    assert np.count_nonzero(off) <= max(1, n.size // 5000), f"{np.count_nonzero(off)} pixels differ"
    npz = np.load(oracle_dir / "adjusted.npz")
    t = ours["transform"]
    for band, key in ((0, "OUTPUT_ADJUSTED"), (1, "OUTPUT_ADJUSTED_COUNT")):
        mine = read(ours["smooth"][key])
        mine[off] = np.nan
        compare_pixels(mine, npz, band, t, skip=off)
    table = pd.read_csv(ours["zonal"]["OUTPUT_CSV"], dtype={id_field: str})
    assert table["probability_ci95_low"].isna().all(), "an interval built on the published band 2, which is no count"
    cells = [box(t.c + c * t.a, t.f + (r + 1) * t.e, t.c + (c + 1) * t.a, t.f + r * t.e) for r, c in np.argwhere(off)]
    areas = gpd.read_file(zones[0], layer=zones[1])
    touched = set(areas[areas.intersects(gpd.GeoSeries(cells, crs=areas.crs).unary_union)][id_field]) if cells else set()
    assert len(touched) <= 3, touched
    return compare_tables(table[~table[id_field].isin(touched)], oracle_dir / "table.csv", id_field, skip=touched), off


@pytest.fixture(scope="module")
def sample_chain(tmp_path_factory, qgis_processing, sample_servers, sample_archive, published_python):
    from conftest import ensure_provider

    ensure_provider()
    folder = tmp_path_factory.mktemp("published-sample")
    info = json.loads((sample_archive / "archive.json").read_text())
    zones = (sample_archive / "zones" / "small_areas.gpkg", "small_areas")
    ours, oracle_dir = published_chain(folder, sample_servers, published_python, info["aoi_27700"], 27700, zones[0],
                                       zones[1], "code", "2024-01-01", "2024-12-31")
    return dict(folder=folder, ours=ours, oracle=oracle_dir, zones=zones, aoi=info["aoi_27700"])


def test_sample_archive_as_published(sample_chain):
    """The published variant end to end through Processing on the sample archive (whose products of one
    datatake share a datetime, so odc-stac fuses them) equals the published code run on the same items."""
    report = json.loads((sample_chain["folder"] / "adjusted.regression.json").read_text())
    assert report["method"].startswith("published") and report["rows_left_out"] == 0
    assert report["pixels_without_observation"] == 0
    worst, off = check_chain(sample_chain["ours"], sample_chain["oracle"], "code", sample_chain["zones"])
    print(f"sample archive: {np.count_nonzero(off)} pixel(s) read differently by GDAL's approximate warper; "
          f"worst per-area differences {worst}")


def test_model_variant_1_is_the_published_table(sample_chain, sample_servers, tmp_path):
    """cloudprob:annualcloudprobability with VARIANT=1 and only the README's parameters makes the published
    table: the same columns and values as the published code's (the areas the one edge pixel touches aside)."""
    import pandas as pd
    from qgis import processing

    xmin, ymin, xmax, ymax = sample_chain["aoi"]
    zones = sample_chain["zones"]
    processing.run("cloudprob:annualcloudprobability", {
        "STAC_URL": sample_servers.stac.url, "COLLECTION": "sentinel-2-c1-l2a",
        "AOI": f"{xmin},{xmax},{ymin},{ymax} [EPSG:27700]", "START_DATE": "2024-01-01", "END_DATE": "2024-12-31",
        "ZONES": f"{zones[0]}|layername={zones[1]}", "ZONE_ID_FIELD": "code", "TARGET_CRS": "EPSG:27700",
        "RESOLUTION": 20, "VARIANT": 1, "zonal:SMALL_AREAS": str(tmp_path / "areas.gpkg"),
        "zonal:SMALL_AREAS_CSV": str(tmp_path / "areas.csv")})
    ours = pd.read_csv(tmp_path / "areas.csv", dtype={"code": str})
    chain = pd.read_csv(sample_chain["ours"]["zonal"]["OUTPUT_CSV"], dtype={"code": str})
    columns = [f"{p}_{s}" for p in ("probability", "acquisition_count") for s in STATS]
    pd.testing.assert_frame_equal(ours[["code"] + columns], chain[["code"] + columns])
    assert ours["probability_ci95_low"].isna().all()


def test_pixels_without_observation_are_no_data_and_counted(tmp_path):
    """Where the published code's fit fails (a pixel without observation, a 0 % pixel), the variant leaves
    no data in both results and counts the rows; the rest is fitted as usual."""
    from cloud_probability.core.smoothing import published_adjustment

    shape = (70, 90)
    p = field(shape, 3)
    n = np.random.default_rng(3).integers(1, 40, shape)
    n[10:14, 20:25] = 0  # 20 pixels no date sees
    p[50, 60] = 0.0  # a real 0 %: its band-1 deviation is infinite
    cloudy, valid = write_counts(tmp_path, p, n)
    out = {k: tmp_path / f"{k}.tif" for k in ("lag", "adjusted", "adjusted_count")}
    fit = published_adjustment(str(cloudy), str(valid), str(out["lag"]), str(out["adjusted"]), str(out["adjusted_count"]))
    band1, band2 = read(out["adjusted"]), read(out["adjusted_count"])
    assert fit.pixels_without_observation == 20
    assert fit.rows_left_out == 2 * 20 + 1
    assert fit.pixels == 2 * n.size - 41
    assert np.isnan(band1[10:14, 20:25]).all() and np.isnan(band2[10:14, 20:25]).all()
    assert np.isnan(band1[50, 60]) and not np.isnan(band2[50, 60])
    assert np.count_nonzero(np.isnan(band1)) == 21 and np.count_nonzero(np.isnan(band2)) == 20
    report = json.loads((tmp_path / "adjusted.regression.json").read_text())
    assert report["rows_left_out"] == 41 and report["pixels_without_observation"] == 20


def test_a_period_across_two_calendar_years_is_refused():
    """The published code makes one layer per calendar year: counting as it does across two is refused."""
    from cloud_probability.core.frequency import FrequencyError, cloud_frequency, grid_for_area
    from cloud_probability.core.masks import PRESETS
    from cloud_probability.core.stac import normalise_item

    def item(i, when):
        return normalise_item({
            "type": "Feature", "stac_version": "1.0.0", "id": f"S2A_T31UCT_{when:%Y%m%d}_L2A", "collection": "c",
            "geometry": {"type": "Polygon", "coordinates": [[[0, 51], [1, 51], [1, 52], [0, 52], [0, 51]]]},
            "bbox": [0, 51, 1, 52], "properties": {"datetime": f"{when:%Y-%m-%dT10:00:00Z}", "platform": "sentinel-2a"},
            "assets": {"scl": {"href": f"http://127.0.0.1:9/{i}/SCL.tif"}, "cloud": {"href": f"http://127.0.0.1:9/{i}/c.tif"}},
            "links": []})

    from datetime import date

    scenes = [item(0, date(2023, 12, 30)), item(1, date(2024, 1, 4))]
    grid = grid_for_area((540_000, 170_000, 541_000, 171_000), "EPSG:27700", 20)
    with pytest.raises(FrequencyError, match="one layer per calendar year.*2023–2024"):
        cloud_frequency(scenes, grid, PRESETS["scl"], {"probability": "p.tif", "valid": "v.tif", "cloudy": "c.tif"},
                        measure="mean_probability", observations="product")


def test_real_series_as_published(tmp_path, provider, realdata, published_python):
    """A real-data series: the 36 real dates of 2017 of the eo-learn patch (s2cloudless probabilities and
    masks over Slovenia, written as Collection-1 items; one datatake split over two products of one datetime,
    which odc-stac fuses), its top 65 rows, where every pixel has observations and a probability above 0 %
    (the published code stops elsewhere). The published variant equals the published code run on it."""
    import realdata_archives
    import servers

    archive = realdata_archives.write_eolearn_c1_archive(BUILD / "realdata-eolearn-c1", realdata)
    t = realdata_archives.eolearn_c1_layers(realdata)["transform"]
    aoi = (t.c, t.f - 65 * 10.0, t.c + 100 * 10.0, t.f)
    zones = zones_gpkg(tmp_path, aoi, 30, 17, crs="EPSG:32633")
    with servers.SampleServers(archive, tmp_path / "servers") as running:
        ours, oracle_dir = published_chain(tmp_path, running, published_python, aoi, 32633, zones, "zones", "code",
                                           "2017-01-01", "2017-12-31", resolution=10)
    report = json.loads((tmp_path / "adjusted.regression.json").read_text())
    assert report["rows_left_out"] == 0 and report["pixels"] == 2 * 65 * 100
    worst, off = check_chain(ours, oracle_dir, "code", (zones, "zones"))
    assert not off.any()  # on the sources' own grid no cell centre lies on an edge
    n = read(ours["freq"]["OUTPUT_VALID"])
    assert n.max() == 36  # the split datatake's two products share a datetime: fused, one observation
