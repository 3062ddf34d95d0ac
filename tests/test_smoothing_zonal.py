"""Smoothing, adjustment and zonal statistics: against direct computations and the truth."""
from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from formulas import exactextract_median
from rasterio.transform import from_origin

from cloud_probability.sampledata import sample_archive as sa
from cloud_probability.core.smoothing import NODATA, convolve, smooth_arrays, smooth_probability
from cloud_probability.core.zonal import ZonalError, zonal_statistics, zonal_statistics_in_process


def _write(path, array, transform=None, crs="EPSG:27700", nodata=None):
    transform = transform or from_origin(500000, 200000, 20, 20)
    with rasterio.open(path, "w", driver="GTiff", width=array.shape[1], height=array.shape[0], count=1,
                       dtype=array.dtype.name, crs=crs, transform=transform, nodata=nodata) as dst:
        dst.write(array[None])
    return str(path)


def test_box_smoothing_is_the_acquisition_weighted_ratio_with_no_mirroring():
    from scipy.signal import convolve2d

    rng = np.random.default_rng(1)
    valid = rng.integers(0, 150, (60, 70)).astype(float)
    cloudy = np.floor(valid * rng.random((60, 70)))
    valid[20:25, 30:40] = 0  # no data weighs nothing
    cloudy[20:25, 30:40] = 0
    smoothed, kv = smooth_arrays(cloudy, valid, 21, "box")
    k = np.ones((21, 21))
    expected = 100 * convolve2d(cloudy, k, mode="same", fillvalue=0) / convolve2d(valid, k, mode="same", fillvalue=0)
    np.testing.assert_allclose(smoothed, expected, rtol=1e-9)
    np.testing.assert_allclose(kv, convolve2d(valid, k, mode="same") / 441, rtol=1e-9)


def test_gaussian_is_three_boxes_close_to_a_gaussian():
    from scipy.ndimage import gaussian_filter

    impulse = np.zeros((101, 101))
    impulse[50, 50] = 1.0
    ours = convolve(impulse, 21, "gaussian")
    reference = gaussian_filter(impulse, sigma=21 / 6, mode="constant", truncate=6.0)
    assert ours.sum() == pytest.approx(1.0)
    yy, xx = np.mgrid[-50:51, -50:51]
    sigma2 = (21 / 6) ** 2
    assert (ours * xx**2).sum() == pytest.approx(sigma2, rel=0.05)  # the boxes' variances add up to σ²
    # close in shape too: L1 of two unit-mass kernels (0.074 at σ = 3.5 px; one 11-px box gives 0.59)
    assert np.abs(ours - reference).sum() < 0.08


def test_strips_with_halo_equal_one_pass_and_no_data_stays(tmp_path):
    rng = np.random.default_rng(2)
    valid = rng.integers(50, 150, (300, 200)).astype(np.uint16)
    cloudy = (valid * rng.random((300, 200))).astype(np.uint16)
    valid[100:160, :] = 0  # a band wider than the kernel: no data in its middle
    cloudy[100:160, :] = 0
    c, v = _write(tmp_path / "c.tif", cloudy), _write(tmp_path / "v.tif", valid)
    smooth_probability(c, v, str(tmp_path / "one.tif"), size=21, adjust=False, strip_rows=1000)
    smooth_probability(c, v, str(tmp_path / "strips.tif"), size=21, adjust=False, strip_rows=7)
    one, strips = rasterio.open(tmp_path / "one.tif").read(1), rasterio.open(tmp_path / "strips.tif").read(1)
    np.testing.assert_array_equal(one, strips)
    expected, _ = smooth_arrays(cloudy.astype(float), valid.astype(float), 21, "box")
    np.testing.assert_allclose(one, np.where(np.isnan(expected), NODATA, expected), rtol=1e-5)
    assert (one[115:145] == NODATA).all() and (one[:90] != NODATA).all()


def test_adjustment_removes_the_covariate_and_keeps_the_mean(tmp_path):
    rng = np.random.default_rng(3)
    rows, cols = 200, 200
    valid = np.full((rows, cols), 100, np.uint16)
    urban = np.zeros((rows, cols), np.float32)
    urban[40:120, 40:120] = 1.0
    truth = 40 + rng.normal(0, 5, (rows, cols))  # a signal the urban block does not explain
    cloudy = np.round(valid * (truth + 15 * urban) / 100).astype(np.uint16)
    c, v = _write(tmp_path / "c.tif", cloudy), _write(tmp_path / "v.tif", valid)
    u = _write(tmp_path / "urban.tif", urban)
    result = smooth_probability(c, v, str(tmp_path / "s.tif"), str(tmp_path / "a.tif"), size=5, covariates=[u])
    assert result.names == ["smoothed_valid_obs", "urban"] and 12 < result.coefficients[1] < 16
    adjusted = rasterio.open(tmp_path / "a.tif").read(1)
    smoothed = rasterio.open(tmp_path / "s.tif").read(1)
    inner = (slice(50, 110), slice(50, 110))
    assert abs((adjusted[inner] - truth[inner]).mean()) < abs((smoothed[inner] - truth[inner]).mean()) / 3
    assert adjusted.mean() == pytest.approx(smoothed.mean(), abs=0.05)
    saved = json.loads((tmp_path / "a.regression.json").read_text())
    assert saved["pixels"] == rows * cols and 0 < saved["r2"] <= 1


def test_zonal_weights_are_exact_cover_fractions(tmp_path):
    import geopandas as gpd
    from shapely.geometry import Polygon, box

    values = np.arange(16, dtype=np.float32).reshape(4, 4) + 10
    values[3, 3] = -9999
    raster = _write(tmp_path / "p.tif", values, from_origin(0, 80, 20, 20), nodata=-9999.0)
    zones = gpd.GeoDataFrame({"code": ["aligned", "half", "outside", "nodata", "bowtie", "empty"]}, geometry=[
        box(0, 40, 40, 80),  # 2 × 2 whole cells
        box(0, 60, 30, 80),  # one cell and half of its neighbour
        box(200, 200, 220, 220),
        box(61, 1, 79, 19),  # only the no-data cell
        Polygon([(0, 0), (40, 40), (40, 0), (0, 40)]),  # invalid (self-intersecting)
        Polygon(),
    ], crs="EPSG:27700")
    result = zonal_statistics(raster, zones, "code")
    t = result.table.set_index("code")
    assert t.loc["aligned", "probability_mean"] == pytest.approx(values[0:2, 0:2].mean())
    cells = values[0:2, 0:2]
    assert (t.loc["aligned", "probability_min"], t.loc["aligned", "probability_max"]) == (cells.min(), cells.max())
    assert t.loc["aligned", "probability_stdev"] == pytest.approx(cells.std())  # population form, as numpy's default
    assert t.loc["aligned", "probability_median"] == pytest.approx(exactextract_median(cells))
    assert t.loc["aligned", "covered_cells"] == pytest.approx(4) and t.loc["aligned", "coverage_pct"] == pytest.approx(100)
    assert t.loc["half", "probability_mean"] == pytest.approx((values[0, 0] + 0.5 * values[0, 1]) / 1.5)
    assert t.loc["half", "covered_cells"] == pytest.approx(1.5)
    for code in ("outside", "nodata", "empty"):
        assert np.isnan(t.loc[code, "probability_mean"]), code
    assert t.loc["nodata", "coverage_pct"] == 0.0
    assert result.invalid == ["bowtie (area 0 → 800 after repair)"]  # both 20 m triangles kept: 2 × 400 m²
    assert result.empty == ["empty"] and set(result.no_data) == {"outside", "nodata"}
    # the bowtie's two lobes: the left triangle covers half of cells (row 2–3, col 0) etc.: its whole area counts
    assert t.loc["bowtie", "covered_cells"] == pytest.approx(2.0)
    # the helper-process path (used inside QGIS) gives the same table
    other = zonal_statistics_in_process(raster, zones, "code").table.set_index("code")
    np.testing.assert_allclose(other["probability_mean"].astype(float), t["probability_mean"].astype(float), equal_nan=True)


@pytest.fixture(scope="module")
def year_products(sample_servers, sample_archive, tmp_path_factory):
    """Raw, smoothed and adjusted probability of the sample year on its EPSG:27700 grid."""
    from conftest import served_scenes

    from cloud_probability.core.frequency import cloud_frequency, grid_for_area
    from cloud_probability.core.masks import PRESETS

    folder = tmp_path_factory.mktemp("year")
    x0, y0, x1, y1 = json.loads((sample_archive / "archive.json").read_text())["aoi_27700"]
    grid = grid_for_area((x0, y0, x1, y1), "EPSG:27700", 20.0)
    out = {k: str(folder / f"{k}.tif") for k in ("probability", "valid", "cloudy")}
    cloud_frequency(served_scenes(sample_servers), grid, PRESETS["scl"], out, tile_px=256, cache_dir=folder / "c")
    regression = smooth_probability(out["cloudy"], out["valid"], str(folder / "smoothed.tif"), str(folder / "adjusted.tif"),
                                    covariates=[str(sample_archive / "truth" / "urban_fraction_27700.tif")])
    return {"raw": out["probability"], "smoothed": str(folder / "smoothed.tif"), "adjusted": str(folder / "adjusted.tif"),
            "valid": out["valid"], "regression": regression}


def test_adjusted_is_closer_to_the_truth_and_the_artefacts_shrink(year_products, sample_archive):
    import csv

    import geopandas as gpd

    zones = gpd.read_file(sample_archive / "zones" / "small_areas.gpkg", layer="small_areas")
    with open(sample_archive / "truth" / "small_areas_truth.csv") as fh:
        truth = {r["code"]: float(r["true_cloud_prob_pct"]) for r in csv.DictReader(fh)}
    layout = sa.make_layout(sa.SampleSpec.small())
    centroids = zones.geometry.centroid
    ux, uy, ur = layout.urban
    urban = ((centroids.x - ux) ** 2 + (centroids.y - uy) ** 2 < ur**2).values
    overlap = np.array([sa.in_swath(layout, 94, np.array(c.x), np.array(c.y)) and sa.in_swath(layout, 137, np.array(c.x), np.array(c.y))
                        for c in centroids])
    errors, lines = {}, []
    for name in ("raw", "smoothed", "adjusted"):
        table = zonal_statistics(year_products[name], zones, "code").table
        err = table["probability_mean"].values - np.array([truth[c] for c in table["code"]])
        errors[name] = err
        lines.append(f"{name:9s} RMSE {np.sqrt(np.nanmean(err**2)):5.2f}  bias {np.nanmean(err):+5.2f}  "
                     f"urban−rest {np.nanmean(err[urban]) - np.nanmean(err[~urban]):+5.2f}  "
                     f"overlap−single {np.nanmean(err[overlap]) - np.nanmean(err[~overlap]):+5.2f}")
    print("\nper-area error against the truth (percentage points):\n" + "\n".join(lines))
    rmse = {k: np.sqrt(np.nanmean(v**2)) for k, v in errors.items()}
    assert rmse["adjusted"] < rmse["raw"]
    for mask in (urban, overlap):
        gap = {k: abs(np.nanmean(v[mask]) - np.nanmean(v[~mask])) for k, v in errors.items()}
        assert gap["adjusted"] < 0.5 * gap["raw"], gap
    assert year_products["regression"].r2 > 0.1


def test_processing_smooth_zonal_and_the_model(provider, year_products, sample_servers, sample_archive, tmp_path):
    """The algorithms and the shipped model through Processing, each output against an
    independent expected value: the smoothing and both adjustments against numpy transcriptions
    of their formulas (tests/formulas.py) on the inputs they were given, the zonal means against
    exact cell-by-polygon weights (GEOS), and the model's per-pixel counts against the generator's
    truth at 300 pixels (tests/sample_truth.py)."""
    import geopandas as gpd
    from qgis import processing
    import sample_truth as st
    from formulas import covariate_smoothing, reference, weighted_mean
    from qgis.core import (
        QgsApplication, QgsProcessingContext, QgsProcessingFeedback, QgsProcessingOutputLayerDefinition, QgsProject,
        QgsVectorLayer,
    )

    def read(path):
        with rasterio.open(path) as ds:
            a = ds.read(1).astype(np.float64)
            if ds.nodata is not None:
                a[a == ds.nodata] = np.nan
            return a, ds.transform

    def same(got, expected, atol, what):
        assert np.array_equal(np.isnan(got), np.isnan(expected)), f"{what}: no data differs"
        has = ~np.isnan(expected)
        assert has.sum() > 10_000 and np.abs(got - expected)[has].max() <= atol, \
            (what, float(np.abs(got - expected)[has].max()))

    feedback = QgsProcessingFeedback()
    cloudy_path, urban_path = year_products["raw"].replace("probability", "cloudy"), sample_archive / "truth" / "urban_fraction_27700.tif"
    smoothed = processing.run("cloudprob:smoothprobability", {
        "CLOUDY": cloudy_path, "VALID": year_products["valid"], "COVARIATES": [str(urban_path)],
        "OUTPUT_SMOOTHED": str(tmp_path / "s.tif"), "OUTPUT_ADJUSTED": str(tmp_path / "a.tif")}, feedback=feedback)
    assert (tmp_path / "a.regression.json").exists() and "R²" in feedback.textLog()
    expected = covariate_smoothing(read(cloudy_path)[0], read(year_products["valid"])[0], [read(urban_path)[0]])
    same(read(smoothed["OUTPUT_SMOOTHED"])[0], expected["smoothed"], 1e-3, "smoothed")
    same(read(smoothed["OUTPUT_ADJUSTED"])[0], expected["adjusted"], 1e-3, "adjusted")

    zones = f"{sample_archive / 'zones' / 'small_areas.gpkg'}|layername=small_areas"
    alg = QgsApplication.processingRegistry().createAlgorithmById("cloudprob:zonalstatistics")
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    results, ok = alg.run({
        "INPUT_RASTER": smoothed["OUTPUT_ADJUSTED"], "ZONES": zones, "ZONE_ID_FIELD": "code", "VALID": year_products["valid"],
        "OUTPUT": QgsProcessingOutputLayerDefinition(str(tmp_path / "z.gpkg"), QgsProject.instance()),
        "OUTPUT_CSV": str(tmp_path / "z.csv")}, context, feedback)
    assert ok, feedback.textLog()
    layer = QgsVectorLayer(results["OUTPUT"], "z", "ogr")
    names = [f.name() for f in layer.fields()]
    # the units reach QGIS from the file itself (its default style), before any post-processor
    assert layer.attributeDisplayName(layer.fields().indexOf("acquisition_count_mean")) == \
        "Acquisitions per cell, area-weighted mean (count)"
    assert {"code", "name", "probability_mean", "probability_median", "probability_min", "probability_max",
            "probability_stdev", "coverage_pct", "covered_cells", "acquisition_count_mean", "acquisition_count_median",
            "acquisition_count_min", "acquisition_count_max", "acquisition_count_stdev", "probability_ci95_low",
            "probability_ci95_high"} <= set(names)
    assert layer.featureCount() == 300 and layer.crs().authid() == "EPSG:27700"
    rows = (tmp_path / "z.csv").read_text().splitlines()
    assert rows[0].startswith("code,name,probability_mean,probability_median") and len(rows) == 301
    # the area-weighted means of a sample of zones (largest, smallest, and between) from exact weights
    table = gpd.read_file(tmp_path / "z.gpkg").set_index("code")
    polygons = gpd.read_file(sample_archive / "zones" / "small_areas.gpkg", layer="small_areas").set_index("code")
    adjusted, grid = read(smoothed["OUTPUT_ADJUSTED"])
    valid_count = read(year_products["valid"])[0]
    order = polygons.area.sort_values().index
    for code in list(order[:4]) + list(order[-4:]) + list(order[100:300:50]):
        mean, weight = weighted_mean(adjusted, polygons.geometry[code], grid)
        assert table.loc[code, "probability_mean"] == pytest.approx(mean, abs=1e-6), code
        assert table.loc[code, "covered_cells"] == pytest.approx(weight, abs=1e-6), code
        assert table.loc[code, "acquisition_count_mean"] == pytest.approx(
            weighted_mean(valid_count, polygons.geometry[code], grid)[0], abs=1e-6), code
    details = context.layersToLoadOnCompletion()[results["OUTPUT"]]
    details.postProcessor().postProcessLayer(layer, context, feedback)
    ranges = layer.renderer().ranges()
    assert layer.renderer().type() == "graduatedSymbol" and len(ranges) >= 3
    widths = {round(r.upperValue() - r.lowerValue(), 9) for r in ranges}  # equal intervals, stated in the name
    assert len(widths) == 1 and f"equal intervals of {widths.pop():g} percentage points" in layer.name()
    means = [f["probability_mean"] for f in layer.getFeatures() if isinstance(f["probability_mean"], float)]
    assert ranges[0].lowerValue() <= min(means) and max(means) <= ranges[-1].upperValue()
    assert layer.attributeDisplayName(layer.fields().indexOf("probability_mean")) == "Cloud probability, area-weighted mean (%)"

    x0, y0, x1, y1 = json.loads((sample_archive / "archive.json").read_text())["aoi_27700"]
    common = {
        "STAC_URL": sample_servers.stac.url, "AOI": f"{x0},{x1},{y0},{y1} [EPSG:27700]",
        "START_DATE": "2024-01-01", "END_DATE": "2024-12-31", "ZONES": zones, "ZONE_ID_FIELD": "code",
        "TARGET_CRS": "EPSG:27700", "RESOLUTION": 20}
    # the reference chain by default (Collection 1, mean of 'cloud', the reference adjustment);
    # the intermediate outputs need no name (temporary files), the counts are named to be checked
    model = processing.run("cloudprob:annualcloudprobability", {
        **common, "zonal:SMALL_AREAS": str(tmp_path / "model.gpkg"), "zonal:SMALL_AREAS_CSV": str(tmp_path / "model.csv"),
        "smoothing:ADJUSTED": str(tmp_path / "model_adj.tif"), "frequency:VALID": str(tmp_path / "model_valid.tif"),
        "frequency:CLOUDY": str(tmp_path / "model_cloudy.tif")})
    assert model["zonal:SMALL_AREAS"] == str(tmp_path / "model.gpkg")
    assert len((tmp_path / "model.csv").read_text().splitlines()) == 301
    # the frequency chain, one parameter away: adjusts on the smoothed valid count alone
    processing.run("cloudprob:annualcloudprobability", {
        **common, "MEASURE": 0, "METHOD": 0, "zonal:SMALL_AREAS": str(tmp_path / "freq.gpkg"),
        "smoothing:ADJUSTED": str(tmp_path / "freq_adj.tif"), "frequency:VALID": str(tmp_path / "freq_valid.tif"),
        "frequency:CLOUDY": str(tmp_path / "freq_cloudy.tif")})

    # the counts of both chains at 300 pixels, against the generator's truth
    layout = sa.make_layout(sa.SampleSpec.small())
    valid_m, grid = read(tmp_path / "model_valid.tif")
    rng = np.random.default_rng(17)
    r, c = rng.integers(0, valid_m.shape[0], 300), rng.integers(0, valid_m.shape[1], 300)
    x, y = grid * (c + 0.5, r + 0.5)
    truth = st.counts_at(sa, layout, np.asarray(x), np.asarray(y), 27700)
    assert truth["mean_valid"].min() > 20  # every sampled pixel is observed, most from several tiles
    np.testing.assert_array_equal(valid_m[r, c], truth["mean_valid"])
    np.testing.assert_allclose(read(tmp_path / "model_cloudy.tif")[0][r, c], truth["mean_cloudy"], atol=1e-3)
    np.testing.assert_array_equal(read(tmp_path / "freq_valid.tif")[0][r, c], truth["freq_valid"])
    np.testing.assert_array_equal(read(tmp_path / "freq_cloudy.tif")[0][r, c], truth["freq_cloudy"])
    # each chain's adjustment against the transcription of its formula on the counts it was given
    n = np.nan_to_num(valid_m).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(n > 0, 100.0 * read(tmp_path / "model_cloudy.tif")[0] / np.maximum(n, 1), np.nan)
    same(read(tmp_path / "model_adj.tif")[0], reference(p, n)["adjusted"], 1e-2, "reference adjustment")
    expected = covariate_smoothing(read(tmp_path / "freq_cloudy.tif")[0], read(tmp_path / "freq_valid.tif")[0])
    same(read(tmp_path / "freq_adj.tif")[0], expected["adjusted"], 1e-3, "frequency chain adjustment")


def test_the_model_runs_as_a_background_task(provider, sample_servers, sample_archive, tmp_path):
    """What the toolbox does with an algorithm that allows threading: a QgsTask on a worker thread."""
    import threading
    import time

    from qgis.core import (
        QgsApplication, QgsProcessingAlgRunnerTask, QgsProcessingContext, QgsProcessingFeedback, QgsProject,
    )

    x0, y0, x1, y1 = json.loads((sample_archive / "archive.json").read_text())["aoi_27700"]
    alg = QgsApplication.processingRegistry().createAlgorithmById("cloudprob:annualcloudprobability")
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    feedback = QgsProcessingFeedback()
    params = {
        "STAC_URL": sample_servers.stac.url, "AOI": f"{x0},{x1},{y0},{y1} [EPSG:27700]", "START_DATE": "2024-01-01",
        "END_DATE": "2024-12-31", "ZONES": f"{sample_archive / 'zones' / 'small_areas.gpkg'}|layername=small_areas",
        "ZONE_ID_FIELD": "code", "TARGET_CRS": "EPSG:27700", "RESOLUTION": 20,
        "zonal:SMALL_AREAS": str(tmp_path / "bg.gpkg")}
    task = QgsProcessingAlgRunnerTask(alg, params, context, feedback)
    seen = {}
    task.executed.connect(lambda ok, results: seen.update(ok=ok, results=results))
    main = threading.get_ident()
    threads = set()
    from qgis.PyQt.QtCore import Qt

    # direct: the slot runs in the thread that reports progress (queued, it would run here)
    feedback.progressChanged.connect(lambda _: threads.add(threading.get_ident()), Qt.ConnectionType.DirectConnection)
    QgsApplication.taskManager().addTask(task)
    deadline = time.monotonic() + 300
    while "ok" not in seen and time.monotonic() < deadline:
        QgsApplication.processEvents()
        time.sleep(0.05)
    assert seen.get("ok"), feedback.textLog()
    assert (tmp_path / "bg.gpkg").exists()
    assert threads and main not in threads  # the work ran off the main thread


def test_point_and_line_zones_are_refused(tmp_path):
    import geopandas as gpd
    from shapely.geometry import LineString, Point

    raster = _write(tmp_path / "p.tif", np.full((4, 4), 50, np.float32), from_origin(0, 80, 20, 20), nodata=-9999.0)
    for geometry, kind in ((Point(10, 10), "Point"), (LineString([(0, 0), (40, 40)]), "LineString")):
        zones = gpd.GeoDataFrame({"code": ["a"]}, geometry=[geometry], crs="EPSG:27700")
        with pytest.raises(ZonalError, match=f"must be polygons; this layer has {kind}"):
            zonal_statistics(raster, zones, "code")


def test_geographic_grid_weights_cells_by_their_area(tmp_path):
    """On a lon/lat grid a cell near the pole is smaller: it must weigh less in the mean."""
    import geopandas as gpd
    from shapely.geometry import box

    # two cells of 10° × 40°: 40–80° N (value 10) and 0–40° N (value 90); one zone over both
    raster = _write(tmp_path / "geo.tif", np.array([[10.0], [90.0]], dtype=np.float32),
                    from_origin(0, 80, 10, 40), crs="EPSG:4326", nodata=-9999.0)
    zones = gpd.GeoDataFrame({"code": ["both"]}, geometry=[box(0, 0, 10, 80)], crs="EPSG:4326")
    mean = zonal_statistics(raster, zones, "code").table["probability_mean"].iloc[0]
    # area of 40–80° N vs 0–40° N on the sphere: sin 80 − sin 40 vs sin 40
    north, south = np.sin(np.radians(80)) - np.sin(np.radians(40)), np.sin(np.radians(40))
    assert mean == pytest.approx((10 * north + 90 * south) / (north + south), rel=0.01)
    assert mean > 55  # an unweighted mean would say 50


# --- a fit that does not depend on the run's extent (FIT_FROM) -------------------------------

@pytest.fixture(scope="module")
def two_runs(sample_servers, sample_archive, tmp_path_factory):
    """The mean cloud probability's counts of the sample year over two overlapping extents (as two
    users' runs would be), and the rows and columns of each that lie over both."""
    from conftest import served_scenes

    from cloud_probability.core.frequency import cloud_frequency, grid_for_area
    from cloud_probability.core.masks import PRESETS

    folder = tmp_path_factory.mktemp("two_runs")
    x0, y0, x1, y1 = json.loads((sample_archive / "archive.json").read_text())["aoi_27700"]
    extents = {"west": (x0, y0, x0 + 3200, y1 - 600), "east": (x0 + 1400, y0 + 800, x1, y1)}
    runs = {}
    scenes = served_scenes(sample_servers)
    for name, extent in extents.items():
        counts = {k: str(folder / f"{name}_{k}.tif") for k in ("probability", "valid", "cloudy")}
        grid = grid_for_area(extent, "EPSG:27700", 20.0)
        cloud_frequency(scenes, grid, PRESETS["scl"], counts, measure="mean_probability", cache_dir=folder / name)
        runs[name] = dict(counts, transform=grid.transform, shape=grid.shape)
    # the common box, and each run's window over it shrunk by the kernel's reach (10 pixels): the
    # pixels whose 21 × 21 neighbourhood lies inside both extents
    left = max(r["transform"].c for r in runs.values())
    top = min(r["transform"].f for r in runs.values())
    right = min(r["transform"].c + 20 * r["shape"][1] for r in runs.values())
    bottom = max(r["transform"].f - 20 * r["shape"][0] for r in runs.values())
    for r in runs.values():
        c0, r0 = round((left - r["transform"].c) / 20), round((r["transform"].f - top) / 20)
        c1, r1 = round((right - r["transform"].c) / 20), round((r["transform"].f - bottom) / 20)
        r["common"] = (slice(r0, r1), slice(c0, c1))
        r["interior"] = (slice(r0 + 10, r1 - 10), slice(c0 + 10, c1 - 10))
    west, east = runs["west"], runs["east"]
    for key in ("valid", "cloudy"):  # the same observations where the runs overlap: only the fit can differ
        np.testing.assert_array_equal(rasterio.open(west[key]).read(1)[west["common"]],
                                      rasterio.open(east[key]).read(1)[east["common"]])
    assert rasterio.open(west["valid"]).read(1)[west["interior"]].size > 5000
    return runs, folder


def _adjust(method, run, out, **kwargs):
    from cloud_probability.core.smoothing import reference_adjustment

    adjusted = str(out) + ".tif"
    if method == "reference":
        reference_adjustment(run["cloudy"], run["valid"], str(out) + "_lag.tif", adjusted, **kwargs)
    else:
        smooth_probability(run["cloudy"], run["valid"], str(out) + "_smoothed.tif", adjusted, **kwargs)
    return rasterio.open(adjusted).read(1), json.loads(open(str(out) + ".regression.json").read())


@pytest.mark.parametrize("method", ["reference", "counts"])
def test_a_reused_fit_makes_overlapping_runs_agree(two_runs, method):
    """Each run fitted over its own extent adjusts the pixels both runs share differently; with the
    fit taken from one run's JSON, the two agree exactly wherever a pixel's neighbourhood lies
    inside both extents."""
    runs, folder = two_runs
    west, east = runs["west"], runs["east"]
    a, fit_a = _adjust(method, west, folder / f"{method}_west")
    b, fit_b = _adjust(method, east, folder / f"{method}_east")
    inner_a, inner_b = a[west["interior"]], b[east["interior"]]
    assert (inner_a != NODATA).all()
    differ = np.abs(inner_a - inner_b) > 0.01
    assert differ.sum() > 50, "the two extents' fits should differ"  # the problem FIT_FROM solves
    key = "slope" if method == "reference" else "coefficients"
    assert fit_a[key] != fit_b[key]

    reused, fit_reused = _adjust(method, east, folder / f"{method}_east_reused", fit_from=str(folder / f"{method}_west.regression.json"))
    np.testing.assert_array_equal(reused[east["interior"]], inner_a)  # bit for bit
    assert fit_reused["fit_from"] == str(folder / f"{method}_west.regression.json")
    for name in (("intercept", "slope", "median_deviation_pct") if method == "reference" else ("coefficients", "means")):
        assert fit_reused[name] == fit_a[name]
    # the west run given its own fit back is the west run
    again, _ = _adjust(method, west, folder / f"{method}_west_again", fit_from=str(folder / f"{method}_west.regression.json"))
    np.testing.assert_array_equal(again, a)


def test_a_fit_that_cannot_be_reused_is_refused(two_runs, tmp_path):
    from cloud_probability.core.smoothing import FitError, reference_adjustment

    runs, folder = two_runs
    east = runs["east"]
    reference = folder / "reference_west.regression.json"
    counts = folder / "counts_west.regression.json"
    if not reference.exists() or not counts.exists():
        _adjust("reference", runs["west"], folder / "reference_west")
        _adjust("counts", runs["west"], folder / "counts_west")
    out = (str(tmp_path / "lag.tif"), str(tmp_path / "adj.tif"))
    with pytest.raises(FitError, match="made with a 21-pixel kernel and a 5 % threshold; this run asks for 11 pixels"):
        reference_adjustment(east["cloudy"], east["valid"], *out, size=11, fit_from=str(reference))
    with pytest.raises(FitError, match="holds a fit of the other method"):
        reference_adjustment(east["cloudy"], east["valid"], *out, fit_from=str(counts))
    with pytest.raises(FitError, match="holds a fit of the other method"):
        smooth_probability(east["cloudy"], east["valid"], *out, fit_from=str(reference))
    with pytest.raises(FitError, match="made on the covariates smoothed_valid_obs; this run has smoothed_valid_obs, east_prob"):
        smooth_probability(east["cloudy"], east["valid"], *out, covariates=[east["probability"]], fit_from=str(counts))
    with pytest.raises(FitError, match="Cannot read the fit to reuse"):
        reference_adjustment(east["cloudy"], east["valid"], *out, fit_from=str(tmp_path / "missing.json"))
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_processing_fit_from(provider, two_runs, tmp_path):
    from qgis import processing
    from qgis.core import QgsApplication, QgsProcessing, QgsProcessingException

    runs, folder = two_runs
    east = runs["east"]
    fit = folder / "reference_west.regression.json"
    if not fit.exists():
        _adjust("reference", runs["west"], folder / "reference_west")
    processing.run("cloudprob:smoothprobability", {
        "CLOUDY": east["cloudy"], "VALID": east["valid"], "METHOD": 1, "FIT_FROM": str(fit),
        "OUTPUT_SMOOTHED": str(tmp_path / "lag.tif"), "OUTPUT_ADJUSTED": str(tmp_path / "adj.tif")})
    core, _ = _adjust("reference", east, tmp_path / "core", fit_from=str(fit))
    np.testing.assert_array_equal(rasterio.open(tmp_path / "adj.tif").read(1), core)
    with pytest.raises(QgsProcessingException, match="other method"):
        processing.run("cloudprob:smoothprobability", {
            "CLOUDY": east["cloudy"], "VALID": east["valid"], "METHOD": 0, "FIT_FROM": str(fit),
            "OUTPUT_SMOOTHED": QgsProcessing.TEMPORARY_OUTPUT, "OUTPUT_ADJUSTED": QgsProcessing.TEMPORARY_OUTPUT})
    help_text = QgsApplication.processingRegistry().algorithmById("cloudprob:smoothprobability").shortHelpString()
    assert "fitted over the extent of the counts" in help_text and "FIT_FROM" in help_text


def test_the_zonal_helper_process_never_blocks_on_its_output_and_forwards_its_log(tmp_path, monkeypatch):
    """The helper process (how QGIS runs the zonal statistics) writing far more than a pipe holds to stderr
    (Python's import trace, PYTHONVERBOSE=1: megabytes) still finishes: before, its stderr was a pipe nobody read while it
    ran, and past 64 KB the helper blocked for good. Its progress and its warnings reach the caller."""
    import threading

    import geopandas as gpd
    from shapely.geometry import box

    from cloud_probability.core.progress import NullProgress
    from cloud_probability.core.smoothing import PUBLISHED_TAG

    values = np.arange(400, dtype=np.float32).reshape(20, 20)
    raster = _write(tmp_path / "p.tif", values, from_origin(0, 400, 20, 20), nodata=-9999.0)
    zones = gpd.GeoDataFrame({"code": [f"z{i}" for i in range(300)]},
                             geometry=[box(i % 20 * 20, i // 20 * 20, i % 20 * 20 + 20, i // 20 * 20 + 20)
                                       for i in range(300)], crs="EPSG:27700")
    band2 = _write(tmp_path / "band2.tif", values, from_origin(0, 400, 20, 20), nodata=-9999.0)
    with rasterio.open(band2, "r+") as ds:  # the published variant's band 2: the helper must say it is no count
        ds.update_tags(**{PUBLISHED_TAG: "2"})

    class Seen(NullProgress):
        def __init__(self):
            self.progress, self.warnings = [], []

        def set_progress(self, value):
            self.progress.append(value)

        def warning(self, message):
            self.warnings.append(message)

    seen = Seen()
    monkeypatch.setenv("PYTHONVERBOSE", "1")  # a line per module imported, per cache file looked at…
    done = {}
    worker = threading.Thread(target=lambda: done.update(result=zonal_statistics_in_process(
        raster, zones, "code", valid_path=band2, progress=seen)), daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "the zonal helper process blocked"
    t = done["result"].table.set_index("code")
    assert t.loc["z0", "probability_mean"] == pytest.approx(values[19, 0])
    assert len(seen.progress) > 2 and seen.progress[-1] == 100.0
    assert len(seen.warnings) == 1 and "2024 release's adjusted band 2" in seen.warnings[0]
