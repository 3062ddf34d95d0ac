"""cloudprob:cloudfrequency and core.frequency: counts equal to the truth, exactly."""
from __future__ import annotations

import json
import warnings
from dataclasses import replace

import numpy as np
import pytest
import rasterio
from conftest import served_scenes

from cloud_probability.core.frequency import (
    PROBABILITY_NODATA, FrequencyError, cloud_frequency, grid_for_area, periods_for, utm_epsg,
)
from cloud_probability.core.masks import PRESETS, MaskSpec
from cloud_probability.core.progress import Cancelled, NullProgress
from cloud_probability.core.reading import Grid
from cloud_probability.sampledata import sample_archive as sa


def _outputs(folder):
    folder.mkdir(parents=True, exist_ok=True)
    return {k: str(folder / f"{k}.tif") for k in ("probability", "valid", "cloudy")}


def _read(path, band=None):
    with rasterio.open(path) as ds:
        return ds.read() if band is None else ds.read(band)


@pytest.fixture(scope="module")
def national_grid(sample_archive):
    """EPSG:27700 at 20 m over the whole archive: both UTM zones and the boundary between."""
    x0, y0, x1, y1 = json.loads((sample_archive / "archive.json").read_text())["aoi_27700"]
    return grid_for_area((x0, y0, x1, y1), "EPSG:27700", 20.0)


@pytest.fixture(scope="module")
def truth_counts(national_grid):
    return sa.observation_counts(sa.SampleSpec.small(), 27700, national_grid.transform, national_grid.shape)


def test_counts_equal_the_generator_counts_across_utm_zones(sample_servers, national_grid, truth_counts, tmp_path):
    scenes = served_scenes(sample_servers)
    assert {s.epsg for s in scenes} == {32630, 32631}
    out = _outputs(tmp_path / "year")
    result = cloud_frequency(scenes, national_grid, PRESETS["scl"], out, tile_px=96, concurrency=4,
                             cache_dir=tmp_path / "cache")
    valid, cloudy = truth_counts
    got_valid, got_cloudy, prob = _read(out["valid"], 1), _read(out["cloudy"], 1), _read(out["probability"], 1)
    np.testing.assert_array_equal(got_valid, valid)
    np.testing.assert_array_equal(got_cloudy, cloudy)
    assert valid.min() < valid.max() <= len(sa.make_layout(sa.SampleSpec.small()).datatakes)  # partial swaths
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = np.where(valid > 0, (100.0 * cloudy / valid).astype(np.float32), PROBABILITY_NODATA)
    np.testing.assert_allclose(prob, expected, rtol=1e-6)
    with rasterio.open(out["probability"]) as ds:
        assert ds.nodata == PROBABILITY_NODATA and ds.dtypes[0] == "float32" and ds.crs.to_epsg() == 27700
        assert ds.descriptions == ("cloud frequency, all (percent)",) and ds.tags()["units"] == "percent"
    with rasterio.open(out["valid"]) as ds:
        assert ds.dtypes[0] == "uint16"
    assert result.acquisitions == 146 and result.tiles == 9 and result.tiles_resumed == 0
    assert result.pixel_observations == int(valid.astype(np.int64).sum())
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())  # cleaned after success


def test_cancel_leaves_no_output_and_a_rerun_resumes(sample_servers, national_grid, truth_counts, tmp_path):
    class CancelAfterTiles(NullProgress):
        def __init__(self, tiles):
            self.tiles, self.calls = tiles, 0

        def set_progress(self, percent):
            self.calls = percent

        def is_canceled(self):
            return self.calls >= 95.0 * self.tiles / 9

    scenes = served_scenes(sample_servers)
    out = _outputs(tmp_path / "run")
    with pytest.raises(Cancelled):
        cloud_frequency(scenes, national_grid, PRESETS["scl"], out, tile_px=96, concurrency=4,
                        cache_dir=tmp_path / "cache", progress=CancelAfterTiles(4))
    assert not any((tmp_path / "run").iterdir())  # nothing half-written
    done = list((tmp_path / "cache").rglob("tile_*.npz"))
    assert 4 <= len(done) < 9 and not list((tmp_path / "cache").rglob("*.part*"))
    result = cloud_frequency(scenes, national_grid, PRESETS["scl"], out, tile_px=96, concurrency=4,
                             cache_dir=tmp_path / "cache")
    assert result.tiles_resumed == len(done)
    np.testing.assert_array_equal(_read(out["valid"], 1), truth_counts[0])
    np.testing.assert_array_equal(_read(out["cloudy"], 1), truth_counts[1])


def test_monthly_bands_add_up_to_the_year(sample_servers, national_grid, truth_counts, tmp_path):
    scenes = served_scenes(sample_servers)
    periods = periods_for("month", scenes)
    assert [p.label for p in periods] == [f"2024-{m:02d}" for m in range(1, 13)]
    out = _outputs(tmp_path / "months")
    cloud_frequency(scenes, national_grid, PRESETS["scl"], out, periods, tile_px=256, cache_dir=tmp_path / "c")
    valid, cloudy = _read(out["valid"]), _read(out["cloudy"])
    assert valid.shape[0] == 12
    np.testing.assert_array_equal(valid.sum(axis=0), truth_counts[0])
    np.testing.assert_array_equal(cloudy.sum(axis=0), truth_counts[1])
    # January of the truth alone
    layout = sa.make_layout(sa.SampleSpec.small())
    january = [d.index for d in layout.datatakes if d.sensing.month == 1]
    v1, c1 = sa.observation_counts(sa.SampleSpec.small(), 27700, national_grid.transform, national_grid.shape, datatakes=january)
    np.testing.assert_array_equal(valid[0], v1)
    np.testing.assert_array_equal(cloudy[0], c1)


def test_eolearn_cloud_free_counts_equal_valid_count(eolearn_servers, realdata, tmp_path):
    """The 68 real dates with CLM as the mask: valid − cloudy = VALID_COUNT, pixel by pixel."""
    import realdata_archives

    patch = realdata_archives.eolearn_patch(realdata)
    scenes = served_scenes(eolearn_servers)
    first = eolearn_servers.archive / scenes[0].item["assets"]["clm"]["href"].split(eolearn_servers.cogs.url + "/")[-1]
    with rasterio.open(first) as ds:  # the patch's own (non-square, ~10 m) grid
        grid = Grid(ds.crs, ds.transform, (ds.height, ds.width))
    spec = MaskSpec(source="score", asset="clm", threshold=0.5, cloud_when="above")
    out = _outputs(tmp_path / "eolearn")
    result = cloud_frequency(scenes, grid, spec, out, tile_px=64, cache_dir=tmp_path / "c")
    valid, cloudy = _read(out["valid"], 1), _read(out["cloudy"], 1)
    assert result.acquisitions == 68 and (valid == 68).all()
    np.testing.assert_array_equal(valid.astype(np.int64) - cloudy, patch["valid_count"])


def _datatake_index(scene) -> int:
    """The generator's index of a served scene's datatake (from the truth's layout)."""
    layout = sa.make_layout(sa.SampleSpec.small())
    # the generator's id is the S2 datatake id (GS2A_<start>_<orbit>); a Scene's is <sat>_<start>
    return next(d.index for d in layout.datatakes if d.datatake_id[1:].startswith(scene.datatake_id))


def test_unreadable_products_are_left_out_and_named(sample_servers, sample_archive, national_grid, tmp_path):
    """One product missing (404), another truncated: their acquisitions are left out of every
    tile, named, listed in a CSV and counted in the tags; every pixel's counts then equal the
    generator's counts without those two acquisitions."""
    import csv

    from cloud_probability.core.stac import normalise_item

    scenes = served_scenes(sample_servers)
    gone, cut = scenes[5], next(s for s in scenes[40:] if s.datatake_id != scenes[5].datatake_id)
    item = json.loads(gone.item_json())
    item["assets"]["scl"]["href"] = item["assets"]["scl"]["href"].replace("SCL.tif", "GONE.tif")
    scenes[scenes.index(gone)] = normalise_item(item)
    # a truncated copy of a real SCL, served by the same nginx (removed at the end)
    relative = cut.asset_href("scl").split(sample_servers.cogs.url + "/")[-1]
    source = sample_archive / relative
    truncated = source.with_name("SCL-truncated-by-test.tif")
    data = source.read_bytes()
    truncated.write_bytes(data[: len(data) * 2 // 3])
    try:
        item = json.loads(cut.item_json())
        item["assets"]["scl"]["href"] = cut.asset_href("scl").replace("SCL.tif", truncated.name)
        scenes[scenes.index(cut)] = normalise_item(item)
        out = _outputs(tmp_path / "skipped")
        result = cloud_frequency(scenes, national_grid, PRESETS["scl"], out, tile_px=96, cache_dir=tmp_path / "c")
        with pytest.raises(FrequencyError, match="could not be read.*(GONE|truncated-by-test).tif"):
            cloud_frequency(scenes, national_grid, PRESETS["scl"], _outputs(tmp_path / "strict"), tile_px=96,
                            cache_dir=tmp_path / "c", fail_on_read_error=True)
    finally:
        truncated.unlink()
    assert set(result.unreadable) == {gone.datatake_id, cut.datatake_id}
    assert "GONE.tif" in result.unreadable[gone.datatake_id] and truncated.name in result.unreadable[cut.datatake_id]
    with open(result.unreadable_csv) as fh:
        rows = {r["datatake_id"]: r for r in csv.DictReader(fh)}
    assert set(rows) == {gone.datatake_id, cut.datatake_id} and gone.item_id in rows[gone.datatake_id]["item_ids"]
    with rasterio.open(out["valid"]) as ds:
        assert ds.tags()["unreadable_acquisitions"] == "2" and ds.tags()["acquisitions"] == "144"
    layout = sa.make_layout(sa.SampleSpec.small())
    others = [d.index for d in layout.datatakes if d.index not in (_datatake_index(gone), _datatake_index(cut))]
    valid, cloudy = sa.observation_counts(sa.SampleSpec.small(), 27700, national_grid.transform, national_grid.shape,
                                          datatakes=others)
    np.testing.assert_array_equal(_read(out["valid"], 1), valid)
    np.testing.assert_array_equal(_read(out["cloudy"], 1), cloudy)
    assert not any((tmp_path / "strict").iterdir())  # the strict run wrote nothing


def test_rerun_without_a_datatake_resumes_the_tiles_it_does_not_touch(sample_servers, national_grid, tmp_path):
    class CancelAtTheEnd(NullProgress):
        percent = 0.0

        def set_progress(self, percent):
            self.percent = percent

        def is_canceled(self):
            return self.percent >= 95.0  # every tile finished, nothing written yet

    scenes = served_scenes(sample_servers)
    with pytest.raises(Cancelled):
        cloud_frequency(scenes, national_grid, PRESETS["scl"], _outputs(tmp_path / "first"), tile_px=96,
                        cache_dir=tmp_path / "c", progress=CancelAtTheEnd())
    # an orbit-94 acquisition: its partial swath covers only the west of the grid
    dropped = next(s for s in scenes if s.relative_orbit == 94).datatake_id
    kept = [s for s in scenes if s.datatake_id != dropped]
    out = _outputs(tmp_path / "second")
    result = cloud_frequency(kept, national_grid, PRESETS["scl"], out, tile_px=96, cache_dir=tmp_path / "c")
    layout = sa.make_layout(sa.SampleSpec.small())
    index = next(d.index for d in layout.datatakes if d.datatake_id[1:].startswith(dropped))
    valid, cloudy = sa.observation_counts(sa.SampleSpec.small(), 27700, national_grid.transform, national_grid.shape,
                                          datatakes=[d.index for d in layout.datatakes if d.index != index])
    np.testing.assert_array_equal(_read(out["valid"], 1), valid)  # no stale tile was reused
    np.testing.assert_array_equal(_read(out["cloudy"], 1), cloudy)
    everything, _ = sa.observation_counts(sa.SampleSpec.small(), 27700, national_grid.transform, national_grid.shape,
                                          datatakes=[index])
    touched = {(r, c) for r in range(0, 232, 96) for c in range(0, 232, 96) if everything[r:r + 96, c:c + 96].any()}
    assert 0 < len(touched) < 9
    assert result.tiles_resumed == 9 - len(touched)  # exactly the untouched tiles came from the cache


def test_shadows_counted_when_asked(sample_servers, national_grid, tmp_path):
    scenes = served_scenes(sample_servers)[:80]
    plain, shadows = _outputs(tmp_path / "a"), _outputs(tmp_path / "b")
    cloud_frequency(scenes, national_grid, PRESETS["scl"], plain, tile_px=512, cache_dir=tmp_path / "c")
    cloud_frequency(scenes, national_grid, replace(PRESETS["scl"], count_shadows=True), shadows, tile_px=512,
                    cache_dir=tmp_path / "c")
    a, b = _read(plain["cloudy"], 1), _read(shadows["cloudy"], 1)
    assert (b >= a).all() and b.sum() > a.sum()
    np.testing.assert_array_equal(_read(plain["valid"], 1), _read(shadows["valid"], 1))


def test_utm_zone_choice():
    assert utm_epsg(-0.1, 51.5) == 32630 and utm_epsg(0.1, 51.5) == 32631 and utm_epsg(151.2, -33.9) == 32756


@pytest.fixture(scope="module")
def scenes_gpkg(qgis_processing, sample_servers, sample_archive, tmp_path_factory):
    from qgis import processing
    from conftest import ensure_provider

    ensure_provider()

    x0, y0, x1, y1 = json.loads((sample_archive / "archive.json").read_text())["aoi_27700"]
    scenes = tmp_path_factory.mktemp("freq") / "scenes.gpkg"
    processing.run("cloudprob:searchscenes", {
        "STAC_URL": sample_servers.stac.url, "AOI": f"{x0},{x1},{y0},{y1} [EPSG:27700]",
        "START_DATE": "2024-01-01", "END_DATE": "2024-12-31", "OUTPUT": str(scenes)})
    return scenes


def test_processing_cloudfrequency_monthly_and_styled(provider, scenes_gpkg, sample_archive, truth_counts, tmp_path):
    from qgis import processing
    from qgis.core import (
        QgsApplication, QgsProcessingContext, QgsProcessingFeedback, QgsProcessingOutputLayerDefinition, QgsProject,
        QgsRasterLayer,
    )

    x0, y0, x1, y1 = json.loads((sample_archive / "archive.json").read_text())["aoi_27700"]
    scenes = scenes_gpkg
    alg = QgsApplication.processingRegistry().createAlgorithmById("cloudprob:cloudfrequency")
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    feedback = QgsProcessingFeedback()
    params = {
        "SCENES": str(scenes), "AOI": f"{x0},{x1},{y0},{y1} [EPSG:27700]", "RESOLUTION": 20,
        **{k: QgsProcessingOutputLayerDefinition(str(tmp_path / f"{k}.tif"), QgsProject.instance())
           for k in ("OUTPUT_PROBABILITY", "OUTPUT_VALID", "OUTPUT_CLOUDY")},
    }
    results, ok = alg.run(params, context, feedback)
    assert ok, feedback.textLog()
    np.testing.assert_array_equal(_read(results["OUTPUT_VALID"], 1), truth_counts[0])
    np.testing.assert_array_equal(_read(results["OUTPUT_CLOUDY"], 1), truth_counts[1])
    assert "pixel-observations" in feedback.textLog()
    details = context.layersToLoadOnCompletion()[results["OUTPUT_PROBABILITY"]]
    layer = QgsRasterLayer(results["OUTPUT_PROBABILITY"], "p")
    details.postProcessor().postProcessLayer(layer, context, feedback)
    shader = layer.renderer().shader().rasterShaderFunction()
    assert (shader.minimumValue(), shader.maximumValue()) == (0.0, 100.0)
    assert [i.label for i in shader.colorRampItemList()][0] == "0 %"

    # default target CRS for a geographic extent: the UTM zone of its centre
    monthly = processing.run("cloudprob:cloudfrequency", {
        "SCENES": str(scenes), "AOI": "-0.01,0.005,51.47,51.48 [EPSG:4326]", "PERIOD": 1, "RESOLUTION": 40,
        "OUTPUT_PROBABILITY": str(tmp_path / "mp.tif"), "OUTPUT_VALID": str(tmp_path / "mv.tif"),
        "OUTPUT_CLOUDY": str(tmp_path / "mc.tif")})
    with rasterio.open(monthly["OUTPUT_VALID"]) as ds:
        assert ds.count == 12 and ds.crs.to_epsg() == utm_epsg(-0.0025, 51.475) and ds.res == (40.0, 40.0)
        assert ds.descriptions[0] == "valid observations, 2024-01 (count)"


def test_processing_rejects_a_geographic_target(provider, scenes_gpkg, tmp_path):
    from qgis import processing
    from qgis.core import QgsProcessing, QgsProcessingException

    with pytest.raises(QgsProcessingException, match="must be projected"):
        processing.run("cloudprob:cloudfrequency", {
            "SCENES": str(scenes_gpkg), "AOI": "0,1,51,52 [EPSG:4326]", "TARGET_CRS": "EPSG:4326",
            "OUTPUT_PROBABILITY": QgsProcessing.TEMPORARY_OUTPUT, "OUTPUT_VALID": QgsProcessing.TEMPORARY_OUTPUT,
            "OUTPUT_CLOUDY": QgsProcessing.TEMPORARY_OUTPUT})


def test_mean_of_fractional_and_whole_percents_mixed_in_one_tile(tmp_path):
    """The mean measure sums whole percents (uint8, Earth Search's ``cloud``) as integers and
    other values in fixed point; one tile mixing both, with SCL no data and values above 100
    (no probability), gives numpy's mean and population standard deviation of the same values."""
    from rasterio.transform import from_origin

    from cloud_probability.core.stac import normalise_item

    rng = np.random.default_rng(7)
    shape, x0, y0 = (64, 80), 500_000.0, 5_700_000.0
    transform = from_origin(x0, y0, 20.0, 20.0)
    kinds = ["float32", "uint8", "float32", "uint8"]
    values, valid = [], []
    scenes = []
    for i, kind in enumerate(kinds):
        scl = rng.integers(0, 12, shape).astype(np.uint8)  # class 0 (no data) about one pixel in 12
        if kind == "uint8":
            cloud = rng.integers(0, 101, shape).astype(np.uint8)
        else:
            cloud = (rng.random(shape) * 100.0).astype(np.float32)
            cloud[rng.random(shape) < 0.05] = 250.0  # no probability: not an observation
        paths = {}
        for name, array in (("scl", scl), ("cloud", cloud)):
            paths[name] = tmp_path / f"d{i}_{name}.tif"
            with rasterio.open(paths[name], "w", driver="GTiff", width=shape[1], height=shape[0], count=1,
                               dtype=array.dtype, crs="EPSG:32630", transform=transform) as ds:
                ds.write(array, 1)
        ok = (scl != 0) & (cloud <= 100)
        valid.append(ok)
        values.append(np.where(ok, cloud.astype(np.float64), np.nan))
        footprint = {"type": "Polygon", "coordinates": [[[-3.2, 51.3], [-2.7, 51.3], [-2.7, 51.6], [-3.2, 51.6],
                                                          [-3.2, 51.3]]]}
        scenes.append(normalise_item({
            "type": "Feature", "id": f"S2A_TEST_{i}", "collection": "sentinel-2-c1-l2a", "geometry": footprint,
            "properties": {"datetime": f"2024-0{i + 1}-10T11:00:00Z", "platform": "sentinel-2a", "proj:epsg": 32630,
                           "s2:datatake_id": f"GS2A_2024010{i}T110000_000000_N05.10"},
            "assets": {"scl": {"href": str(paths["scl"])}, "cloud": {"href": str(paths["cloud"])}},
            "links": [{"rel": "root", "href": "./catalog.json"}],
        }))
    grid = Grid("EPSG:32630", transform, shape)
    out = _outputs(tmp_path / "out")
    out["stdev"] = str(tmp_path / "out" / "stdev.tif")
    result = cloud_frequency(scenes, grid, PRESETS["scl"], out, tile_px=256, concurrency=3,
                             cache_dir=tmp_path / "cache", measure="mean_probability")
    assert result.acquisitions == 4 and not result.unreadable
    stack = np.stack(values)
    count = np.sum(valid, axis=0)
    with warnings.catch_warnings():  # pixels without any observation: NaN, as they should
        warnings.simplefilter("ignore", RuntimeWarning)
        mean, sd = np.nanmean(stack, axis=0), np.nanstd(stack, axis=0)
    np.testing.assert_array_equal(_read(out["valid"], 1), count)
    got = _read(out["probability"], 1)
    np.testing.assert_array_equal(got == PROBABILITY_NODATA, count == 0)
    has = count > 0
    # fixed point keeps 10⁻⁴ %: a truncation to whole percents (a bug) would be off by up to 1
    np.testing.assert_allclose(got[has], mean[has], atol=1e-4, rtol=0)
    assert np.abs(got[has] - np.round(got[has])).max() > 0.1  # fractional values did arrive
    np.testing.assert_allclose(_read(out["stdev"], 1)[has], sd[has], atol=1e-3, rtol=0)
