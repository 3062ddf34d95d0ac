"""The reference product ("Cloud probability statistics per small area") reproduced through
``processing.run`` on Collection-1 items made from real data, against an independent
transcription of its formulas (issue 12, "Must show").

The archive is the eo-learn series (68 real dates of s2cloudless probability and cloud mask
over Slovenia) written as ``sentinel-2-c1-l2a`` items with ``scl`` and ``cloud`` assets, with
partial swaths, a region no date sees, a defective strip and two datatakes split over two
products (:func:`realdata_archives.eolearn_c1_layers`). The transcription (tests/formulas.py) uses only numpy
and scipy.ndimage — nothing of the plugin — so it and the plugin can only agree by both
following the formulas:

    n = dates whose SCL != 0 (one per datatake), p = mean cloud (%) over them, cloudy = Σ p/100
    lag = K0∗(p·n) / K0∗n        K0 = 21×21 ones, centre 0, zeros beyond the edges
    d = 100·(p − lag)/lag,  m = median(d),  d' = d if |d| > T else m  (T = 5)
    OLS p = a + b·d',  adjusted = p − b·(d' − m)  (= p where d is undefined)

Each stage is checked on the inputs it was given (the smoothing on the frequency outputs, the
zonal statistics on the adjusted raster), after those inputs are checked against the raw data,
so float32 storage between stages cannot hide or fake a difference.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from conftest import BUILD
from formulas import KERNEL, THRESHOLD, exactextract_median, neighbourhood_mean, reference

START, END = "2015-07-01", "2017-12-31"


# --- the transcription against hand computations --------------------------------------------------

def test_transcription_on_a_3x3_by_hand():
    """On a 3 × 3 grid the 21 × 21 kernel covers every other cell: lag is the count-weighted
    mean of the eight others, written out here by hand."""
    p = np.array([[10, 20, 30], [40, 50, 60], [70, 80, np.nan]])
    n = np.array([[1, 1, 1], [1, 2, 1], [1, 1, 0]])
    # Σ p·n = 10+20+30+40+100+60+70+80 = 410, Σ n = 9
    lag_by_hand = np.array([[400 / 8, 390 / 8, 380 / 8], [370 / 8, 310 / 7, 350 / 8], [340 / 8, 330 / 8, 410 / 9]])
    np.testing.assert_allclose(neighbourhood_mean(p, n), lag_by_hand, rtol=1e-15)
    r = reference(p, n, threshold=20.0)
    d_by_hand = 100 * (p - lag_by_hand) / lag_by_hand
    assert r["d"][0, 0] == pytest.approx(-80.0) and r["d"][1, 1] == pytest.approx(100 * (50 - 310 / 7) / (310 / 7))
    assert np.isnan(r["d"][2, 2]) and np.isnan(r["adjusted"][2, 2])  # p undefined: no data
    # sorted d: -80, -58.97, -36.84, -13.51, 12.90, 37.14, 64.71, 93.94 -> the mean of the middle two
    assert r["m"] == pytest.approx((d_by_hand[1, 0] + d_by_hand[1, 1]) / 2) and r["pixels"] == 8
    # |d| <= 20 at (1, 0) and (1, 1) only: those take m, keep their p, and are not "shifted"
    assert r["shifted"] == 6
    assert r["adjusted"][1, 0] == pytest.approx(40.0) and r["adjusted"][1, 1] == pytest.approx(50.0)
    dp = np.where(np.abs(d_by_hand) > 20, d_by_hand, r["m"])
    keep = np.isfinite(p)
    b, a = np.polyfit(dp[keep], p[keep], 1)
    assert (r["a"], r["b"]) == (pytest.approx(a), pytest.approx(b))
    np.testing.assert_allclose(r["adjusted"][keep], (p - b * (dp - r["m"]))[keep], rtol=1e-12)
    # the prediction at m plus the residual
    np.testing.assert_allclose(r["adjusted"][keep], (a + b * r["m"]) + (p - a - b * dp)[keep], rtol=1e-12)


def test_transcription_where_the_neighbourhood_is_empty():
    """One observed cell alone in a 25 × 25 hole: its lag is undefined (K0∗n = 0), so is d,
    and adjusted = p; every other cell within reach has that cell's p as its lag."""
    p = np.full((25, 25), np.nan)
    n = np.zeros((25, 25), int)
    p[12, 12], n[12, 12] = 37.0, 3
    lag = neighbourhood_mean(p, n)
    assert np.isnan(lag[12, 12])
    reach = np.zeros((25, 25), bool)
    reach[2:23, 2:23] = True
    reach[12, 12] = False
    assert (lag[reach] == 37.0).all() and np.isnan(lag[~reach]).all()
    r = reference(p, n)
    assert r["adjusted"][12, 12] == 37.0 and np.isnan(r["adjusted"]).sum() == 25 * 25 - 1


def test_convolution_is_the_neighbourhood_sum_by_loops():
    """scipy's convolve with K0 against plain loops over the 21 × 21 window, edges included."""
    rng = np.random.default_rng(12)
    p = rng.uniform(0, 100, (31, 27))
    n = rng.integers(0, 4, (31, 27))
    p[n == 0] = np.nan
    expected = np.full(p.shape, np.nan)
    for i in range(p.shape[0]):
        for j in range(p.shape[1]):
            num = den = 0.0
            for u in range(max(0, i - 10), min(p.shape[0], i + 11)):
                for v in range(max(0, j - 10), min(p.shape[1], j + 11)):
                    if (u, v) != (i, j) and n[u, v] > 0:
                        num += p[u, v] * n[u, v]
                        den += n[u, v]
            if den > 0:
                expected[i, j] = num / den
    np.testing.assert_allclose(neighbourhood_mean(p, n), expected, rtol=1e-12)


# --- the archive ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def layers(realdata):
    import realdata_archives

    return realdata_archives.eolearn_c1_layers(realdata)


@pytest.fixture(scope="module")
def truth(layers):
    """n, Σ p, p from the raw layers (exact integers), and the reference product on them."""
    observed = layers["scl"] != 0
    n = observed.sum(axis=0)
    total = np.where(observed, layers["cloud"], 0).sum(axis=0, dtype=np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(n > 0, total / np.maximum(n, 1), np.nan)
    return {"n": n, "total": total, "p": p, "ref": reference(p, n)}


@pytest.fixture(scope="module")
def c1_archive(realdata):
    import realdata_archives

    return realdata_archives.write_eolearn_c1_archive(BUILD / "realdata-eolearn-c1", realdata)


@pytest.fixture(scope="module")
def c1_servers(c1_archive, tmp_path_factory):
    """The Collection-1 eo-learn archive served for real (nginx + rustac)."""
    import servers

    with servers.SampleServers(c1_archive, tmp_path_factory.mktemp("c1-servers")) as running:
        yield running


def test_archive_items_and_cogs_hold_the_layers(c1_archive, layers, truth):
    """70 items of 68 datatakes; each COG holds its product's layer, the cloud COG declares
    nodata 0 although 0 % occurs where the SCL has data; counts vary from pixel to pixel."""
    from cloud_probability.core.stac import normalise_item

    items = json.loads((c1_archive / "items" / "items.json").read_text())["features"]
    scenes = [normalise_item(i) for i in items]
    assert len(items) == 70 and len({s.datatake_id for s in scenes}) == 68
    assert {s.collection for s in scenes} == {"sentinel-2-c1-l2a"} and all({"scl", "cloud"} <= set(s.assets) for s in scenes)
    by_time = {}
    for item in items:
        by_time.setdefault(item["properties"]["datetime"], []).append(item)
    for t, when in enumerate(layers["times"]):
        products = by_time[when.strftime("%Y-%m-%dT%H:%M:%S.000Z")]
        assert len(products) == len(layers["products"][t])
        scl = np.zeros_like(layers["scl"][t])
        for item in products:
            with rasterio.open(c1_archive / item["assets"]["scl"]["href"]) as ds:
                part = ds.read(1)
                assert ds.nodata == 0 and ds.transform == layers["transform"] and ds.crs.to_epsg() == 32633
            with rasterio.open(c1_archive / item["assets"]["cloud"]["href"]) as ds:
                cloud = ds.read(1)
                assert ds.nodata == 0 and ds.dtypes[0] == "uint8"
            np.testing.assert_array_equal(cloud[part != 0], layers["cloud"][t][part != 0])
            scl = np.where(part != 0, part, scl)
        np.testing.assert_array_equal(scl, layers["scl"][t])
    observed = layers["scl"] != 0
    assert ((layers["cloud"] == 0) & observed).sum() > 5000  # 0 % is a real, frequent value (6865 cells)
    assert (layers["cloud"] <= 100).all() and ((layers["scl"] == 1).sum() > 0)
    assert len(np.unique(truth["n"])) >= 6 and truth["n"][82, 82] == 19 and (truth["n"] == 0).sum() == 624
    # the transcription on the real product has a defined fit and pixels both sides of T
    ref = truth["ref"]
    assert ref["pixels"] == 101 * 100 - 624 - 1 and 0 < ref["shifted"] < ref["pixels"]


# --- the three algorithms --------------------------------------------------------------------------

def _read(path):
    with rasterio.open(path) as ds:
        return ds.read(1, masked=True), ds


@pytest.fixture(scope="module")
def grid_like(c1_archive, layers, tmp_path_factory):
    """A GeoTIFF on the archive's own grid, so the outputs are on it cell for cell."""
    path = tmp_path_factory.mktemp("grid") / "grid.tif"
    rows, cols = layers["scl"].shape[1:]
    with rasterio.open(path, "w", driver="GTiff", width=cols, height=rows, count=1, dtype="uint8",
                       crs="EPSG:32633", transform=layers["transform"]) as dst:
        dst.write(np.zeros((1, rows, cols), np.uint8))
    return str(path)


@pytest.fixture(scope="module")
def frequency_run(qgis_processing, c1_servers, layers, grid_like, tmp_path_factory):
    from qgis import processing
    from conftest import ensure_provider

    ensure_provider()
    folder = tmp_path_factory.mktemp("reference")
    t = layers["transform"]
    rows, cols = layers["scl"].shape[1:]
    aoi = f"{t.c},{t.c + t.a * cols},{t.f + t.e * rows},{t.f} [EPSG:32633]"
    processing.run("cloudprob:searchscenes", {
        "STAC_URL": c1_servers.stac.url, "COLLECTION": "sentinel-2-c1-l2a", "AOI": aoi,
        "START_DATE": START, "END_DATE": END, "OUTPUT": str(folder / "scenes.gpkg")})
    result = processing.run("cloudprob:cloudfrequency", {
        "SCENES": str(folder / "scenes.gpkg"), "GRID_LIKE": grid_like, "MEASURE": 1, "PROBABILITY_ASSET": "cloud",
        "NODATA_CLASSES": "", "OUTPUT_PROBABILITY": str(folder / "probability.tif"),
        "OUTPUT_VALID": str(folder / "valid.tif"), "OUTPUT_CLOUDY": str(folder / "cloudy.tif")})
    return {"folder": folder, **result}


@pytest.fixture(scope="module")
def smoothing_run(frequency_run):
    from qgis import processing

    folder = frequency_run["folder"]
    result = processing.run("cloudprob:smoothprobability", {
        "CLOUDY": frequency_run["OUTPUT_CLOUDY"], "VALID": frequency_run["OUTPUT_VALID"], "KERNEL_SIZE": KERNEL,
        "METHOD": 1, "DEVIATION_THRESHOLD": THRESHOLD,
        "OUTPUT_SMOOTHED": str(folder / "lag.tif"), "OUTPUT_ADJUSTED": str(folder / "adjusted.tif")})
    return {**result, "report": folder / "adjusted.regression.json"}


def _mismatch(ours, theirs, mask, label):
    """Where and by how much two rasters differ, for the assertion message."""
    diff = np.where(mask, np.abs(ours - theirs), 0.0)
    i, j = np.unravel_index(np.argmax(diff), diff.shape)
    return f"{label}: max |diff| {diff.max():.6g} at row {i}, col {j} (ours {ours[i, j]!r}, plugin {theirs[i, j]!r})"


def test_frequency_mean_probability_counts_and_cloudy(frequency_run, layers, truth):
    """MEASURE=1: valid = SCL != 0 once per datatake (class 1 and 0 % included), p = the mean
    cloud %, cloudy = Σ p/100."""
    import geopandas as gpd

    scenes = gpd.read_file(frequency_run["folder"] / "scenes.gpkg")
    assert len(scenes) == 70  # every product found, the two of a split datatake included
    valid, ds = _read(frequency_run["OUTPUT_VALID"])
    assert ds.transform == layers["transform"] and ds.shape == truth["n"].shape and ds.dtypes[0] == "uint16"
    n = truth["n"]
    np.testing.assert_array_equal(valid.data, n, err_msg="valid counts")
    probability, ds = _read(frequency_run["OUTPUT_PROBABILITY"])
    assert ds.nodata == -9999 and ds.dtypes[0] == "float32"
    np.testing.assert_array_equal(np.ma.getmaskarray(probability), n == 0, err_msg="probability no data where n = 0")
    has = n > 0
    got = probability.filled(np.nan).astype(np.float64)
    assert np.abs(got - truth["p"])[has].max() <= 1e-3, _mismatch(truth["p"], got, has, "mean probability")
    cloudy, ds = _read(frequency_run["OUTPUT_CLOUDY"])
    assert ds.dtypes[0] == "float32"
    got = cloudy.filled(0).astype(np.float64)
    assert np.abs(got - truth["total"] / 100)[has].max() <= 1e-4, _mismatch(truth["total"] / 100, got, has, "cloudy")


@pytest.fixture(scope="module")
def smoothing_inputs(frequency_run):
    """p and n as the smoothing reads them: p = 100·cloudy/valid from the frequency outputs."""
    valid, _ = _read(frequency_run["OUTPUT_VALID"])
    cloudy, _ = _read(frequency_run["OUTPUT_CLOUDY"])
    n = np.asarray(valid.data, np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(n > 0, 100.0 * np.asarray(cloudy.filled(0), np.float64) / np.maximum(n, 1), np.nan)
    return {"p": p, "n": n, "ref": reference(p, n)}


def test_smoothing_neighbourhood_and_adjustment(smoothing_run, smoothing_inputs, truth):
    ref = smoothing_inputs["ref"]
    lag, ds = _read(smoothing_run["OUTPUT_SMOOTHED"])
    np.testing.assert_array_equal(np.ma.getmaskarray(lag), np.isnan(ref["lag"]), err_msg="lag no data where K0∗n = 0")
    has = np.isfinite(ref["lag"])
    got = lag.filled(np.nan).astype(np.float64)
    assert np.abs(got - ref["lag"])[has].max() <= 1e-3, _mismatch(ref["lag"], got, has, "lag")

    adjusted, ds = _read(smoothing_run["OUTPUT_ADJUSTED"])
    np.testing.assert_array_equal(np.ma.getmaskarray(adjusted), np.isnan(ref["adjusted"]), err_msg="adjusted no data")
    has = np.isfinite(ref["adjusted"])
    got = adjusted.filled(np.nan).astype(np.float64)
    assert np.abs(got - ref["adjusted"])[has].max() <= 1e-2, _mismatch(ref["adjusted"], got, has, "adjusted")
    # the cell whose neighbourhood has no data keeps its p; cells within 5 % are unchanged
    assert got[82, 82] == pytest.approx(ref["p"][82, 82], abs=1e-3)
    calm = ref["defined"] & (np.abs(ref["d"]) <= THRESHOLD)
    assert calm.sum() > 100 and np.abs(got - ref["p"])[calm].max() <= 1e-3
    # and the chain from the raw data: the same as the transcription of the raw layers
    raw = truth["ref"]
    assert np.abs(got - raw["adjusted"])[has].max() <= 1e-2, _mismatch(raw["adjusted"], got, has, "adjusted vs raw")


def test_smoothing_report(smoothing_run, smoothing_inputs):
    ref = smoothing_inputs["ref"]
    report = json.loads(smoothing_run["report"].read_text())
    assert report["intercept"] == pytest.approx(ref["a"], rel=1e-6, abs=1e-6)
    assert report["slope"] == pytest.approx(ref["b"], rel=1e-6, abs=1e-9)
    assert report["median_deviation_pct"] == pytest.approx(ref["m"], rel=1e-6, abs=1e-6)
    assert report["r2"] == pytest.approx(ref["r2"], rel=1e-6, abs=1e-9)
    assert report["pixels"] == ref["pixels"] and report["shifted"] == ref["shifted"]


# grid-aligned boxes (row0, row1, col0, col1), end excluded, each an odd number of cells with data
# in every cell; several straddle a swath edge, so counts vary inside them
BOXES = {
    "corner": (0, 3, 97, 100),        # 3 × 3 at the raster's edge
    "west": (5, 10, 5, 12),           # 5 × 7
    "swath": (40, 49, 28, 39),        # 9 × 11 across the left third's edge
    "top": (15, 26, 50, 53),          # 11 × 3 across the top strip's edge
    "oblique": (55, 68, 60, 75),      # 13 × 15 across the oblique edge
    "defective": (49, 54, 10, 15),    # 5 × 5 over the defective rows
    "one": (60, 61, 90, 91),          # a single cell
}


@pytest.fixture(scope="module")
def zones_gpkg(layers, truth, frequency_run):
    import geopandas as gpd
    from shapely.geometry import box

    t = layers["transform"]
    codes, geoms = [], []
    for code, (r0, r1, c0, c1) in BOXES.items():
        assert (truth["n"][r0:r1, c0:c1] > 0).all() and ((r1 - r0) * (c1 - c0)) % 2 == 1, code
        x0, y0 = t * (c0, r1)
        x1, y1 = t * (c1, r0)
        codes.append(code)
        geoms.append(box(x0, y0, x1, y1))
    zones = gpd.GeoDataFrame({"code": codes, "label": [f"box {c}" for c in codes],
                              "households": [100 + 7 * i for i in range(len(codes))]}, geometry=geoms, crs="EPSG:32633")
    path = frequency_run["folder"] / "zones.gpkg"
    zones.to_file(path, layer="zones", driver="GPKG")
    return path


def test_zonal_reference_statistics_on_grid_aligned_boxes(smoothing_run, frequency_run, zones_gpkg, smoothing_inputs, truth):
    import csv

    import geopandas as gpd
    from qgis import processing

    folder = frequency_run["folder"]
    result = processing.run("cloudprob:zonalstatistics", {
        "INPUT_RASTER": smoothing_run["OUTPUT_ADJUSTED"], "ZONES": f"{zones_gpkg}|layername=zones",
        "ZONE_ID_FIELD": "code", "VALID": frequency_run["OUTPUT_VALID"],
        "OUTPUT": str(folder / "stats.gpkg"), "OUTPUT_CSV": str(folder / "stats.csv")})
    table = gpd.read_file(result["OUTPUT"]).set_index("code")
    with open(folder / "stats.csv", newline="") as fh:
        csv_rows = {r["code"]: r for r in csv.DictReader(fh)}
    adjusted, _ = _read(smoothing_run["OUTPUT_ADJUSTED"])
    written = adjusted.filled(np.nan).astype(np.float64)  # the cells the statistics are made of
    ours = smoothing_inputs["ref"]["adjusted"]
    n = truth["n"].astype(np.float64)
    assert set(table.index) == set(BOXES) and set(csv_rows) == set(BOXES)
    wrong = []  # every mismatch, not only the first: (box, field, plugin, expected)
    for i, (code, (r0, r1, c0, c1)) in enumerate(BOXES.items()):
        row = table.loc[code]
        assert row["label"] == f"box {code}" and int(row["households"]) == 100 + 7 * i
        assert row["coverage_pct"] == pytest.approx(100.0)
        for prefix, cells, chain in (("probability", written[r0:r1, c0:c1], ours[r0:r1, c0:c1]),
                                     ("acquisition_count", n[r0:r1, c0:c1], None)):
            cells = cells.ravel()
            expected = {"mean": cells.mean(), "median": exactextract_median(cells), "min": cells.min(),
                        "max": cells.max(), "stdev": cells.std(ddof=0)}
            for stat, value in expected.items():
                field = f"{prefix}_{stat}"
                # exactextract interpolates the median in the raster's float32: its rounding, not 1e-6
                tolerance = 1e-5 * max(1.0, abs(value)) if stat == "median" else 1e-6
                for where, got in (("gpkg", float(row[field])), ("csv", float(csv_rows[code][field]))):
                    if not abs(got - value) <= tolerance:
                        wrong.append((code, field, where, got, float(value)))
            if chain is not None:  # and the transcription's own adjusted values, to its tolerance
                for field, value in (("probability_mean", chain.mean()),
                                     ("probability_median", exactextract_median(chain))):
                    if not abs(float(row[field]) - value) <= 1e-2:
                        wrong.append((code, field, "vs transcription", float(row[field]), float(value)))
    assert not wrong, "\n".join(map(str, wrong))


def test_nodata_classes_override_the_measures_rule(frequency_run, layers, truth):
    """NODATA_CLASSES="0,1": the dates whose SCL says defective (1) on rows 50–52 are no
    observation there either; every other pixel keeps its count."""
    from qgis import processing

    folder = frequency_run["folder"]
    result = processing.run("cloudprob:cloudfrequency", {
        "SCENES": str(folder / "scenes.gpkg"), "GRID_LIKE": frequency_run["OUTPUT_VALID"], "MEASURE": 1,
        "NODATA_CLASSES": "0,1", "OUTPUT_PROBABILITY": str(folder / "p01.tif"),
        "OUTPUT_VALID": str(folder / "v01.tif"), "OUTPUT_CLOUDY": str(folder / "c01.tif")})
    valid, _ = _read(result["OUTPUT_VALID"])
    observed = (layers["scl"] != 0) & (layers["scl"] != 1)
    expected = observed.sum(axis=0)
    assert (expected != truth["n"]).any()  # class 1 is there to be dropped
    np.testing.assert_array_equal(valid.filled(0), expected)
