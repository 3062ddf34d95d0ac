"""cloudprob:screenscenes and cloudprob:cloudmask through processing.run, chained on the
output of cloudprob:searchscenes against the loopback servers."""
from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from conftest import served_scenes

from cloud_probability.sampledata import sample_archive as sa


def _aoi_27700(archive, shrink=0.0) -> str:
    xmin, ymin, xmax, ymax = json.loads((archive / "archive.json").read_text())["aoi_27700"]
    return f"{xmin + shrink},{xmax - shrink},{ymin + shrink},{ymax - shrink} [EPSG:27700]"


@pytest.fixture(scope="module")
def scenes_layer(qgis_processing, sample_servers, sample_archive, tmp_path_factory):
    from qgis import processing
    from conftest import ensure_provider

    ensure_provider()

    out = tmp_path_factory.mktemp("screen") / "scenes.gpkg"
    processing.run("cloudprob:searchscenes", {
        "STAC_URL": sample_servers.stac.url, "AOI": _aoi_27700(sample_archive),
        "START_DATE": "2024-01-01", "END_DATE": "2024-12-31", "OUTPUT": str(out),
    })
    return str(out)


def test_screen_ranks_filters_and_combines(provider, scenes_layer, sample_archive, tmp_path):
    from qgis import processing
    from qgis.core import QgsVectorLayer

    out = tmp_path / "screened.gpkg"
    result = processing.run("cloudprob:screenscenes", {
        "SCENES": scenes_layer, "AOI": _aoi_27700(sample_archive, shrink=1500), "MAX_AOI_CLOUD": 30,
        "MIN_AOI_VALID": 60, "CONCURRENCY": 6, "OUTPUT": str(out),
    })
    layer = QgsVectorLayer(result["OUTPUT"], "screened", "ogr")
    rows = sorted(layer.getFeatures(), key=lambda f: f["aoi_rank"])
    assert len(rows) > 10
    assert all(f["aoi_cloud_pct"] <= 30 and f["aoi_valid_pct"] >= 60 and f["aoi_status"] == "ok" for f in rows)
    clouds = [f["aoi_cloud_pct"] for f in rows]
    assert clouds == sorted(clouds) and [f["aoi_rank"] for f in rows] == list(range(1, len(rows) + 1))
    assert len({f["datatake_id"] for f in rows}) == len(rows)  # one row per acquisition
    # every product of the acquisition named, from the generator's own list of products
    truth = json.loads((sample_archive / "truth" / "scenes.json").read_text())
    for f in rows:
        products = {i: t for i, t in truth.items() if t["datatake"].startswith("G" + f["datatake_id"])}
        assert sorted(f["item_ids"].split(",")) == sorted(products) and f["n_products"] == len(products) >= 4
        assert f["mgrs_tiles"].split(",") == sorted({t["tile"] for t in products.values()})
        assert set(f["epsg_codes"].split(",")) == {"32630", "32631"}  # the area straddles 0° E
        assert sorted(i["id"] for i in json.loads(f["stac_items"])) == sorted(products)
        assert f["nodata_pct"] == pytest.approx(100 - f["aoi_valid_pct"])
        assert f["scene_cloud_min"] <= f["scene_cloud"] <= f["scene_cloud_max"]
    # the scene-level figure is not the area's: they differ
    assert any(abs(f["aoi_cloud_pct"] - f["scene_cloud"]) > 5 for f in rows)

    # a later stage given this layer reads all the products of each acquisition
    from qgis.core import QgsProcessingFeedback

    from cloud_probability.processing_provider.common import scenes_from_source

    scenes = scenes_from_source(layer, QgsProcessingFeedback())
    assert sorted(s.item_id for s, _ in scenes) == sorted(i for f in rows for i in f["item_ids"].split(","))


def test_screened_layer_says_what_its_fields_are(provider, scenes_layer, sample_archive, tmp_path):
    """Loaded by QGIS, each acquisition-level field says how it was made and its unit."""
    from qgis.core import (
        QgsApplication, QgsProcessingContext, QgsProcessingFeedback, QgsProcessingOutputLayerDefinition, QgsProject,
        QgsVectorLayer,
    )

    alg = QgsApplication.processingRegistry().createAlgorithmById("cloudprob:screenscenes")
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    feedback = QgsProcessingFeedback()
    results, ok = alg.run({
        "SCENES": scenes_layer, "AOI": _aoi_27700(sample_archive, shrink=1800),
        "OUTPUT": QgsProcessingOutputLayerDefinition(str(tmp_path / "s.gpkg"), QgsProject.instance())}, context, feedback)
    assert ok, feedback.textLog()
    layer = QgsVectorLayer(results["OUTPUT"], "s", "ogr")
    context.layersToLoadOnCompletion()[results["OUTPUT"]].postProcessor().postProcessLayer(layer, context, feedback)

    def alias(name):
        return layer.attributeDisplayName(layer.fields().indexOf(name))

    assert "weighted by their area with data" in alias("scene_cloud") and "(%" in alias("scene_cloud")
    assert alias("nodata_pct") == "No valid data in the area from any of the products (% of the area)"
    assert alias("item_ids").startswith("STAC item ids of all") and "comma-separated" in alias("mgrs_tiles")


def test_screen_with_polygon_area_and_processing_truth(provider, scenes_layer, sample_archive, tmp_path):
    """AOI_LAYER polygons inside one tile: aoi_* equal the generator's own counts."""
    from qgis import processing
    from qgis.core import QgsFeature, QgsGeometry, QgsVectorLayer
    from shapely import vectorized
    from test_screening_core import _interior_area

    layout = sa.make_layout(sa.SampleSpec.small())
    area = _interior_area(layout, "30UYC", 900.0)
    polygons = QgsVectorLayer("Polygon?crs=EPSG:27700", "area", "memory")
    feature = QgsFeature()
    feature.setGeometry(QgsGeometry.fromWkt(area.wkt))
    polygons.dataProvider().addFeatures([feature])
    result = processing.run("cloudprob:screenscenes", {
        "SCENES": scenes_layer, "AOI_LAYER": polygons, "OUTPUT": str(tmp_path / "s.gpkg")})
    layer = QgsVectorLayer(result["OUTPUT"], "s", "ogr")
    tile = next(t for t in layout.tiles if t.code == "30UYC")
    x, y = sa.tile_positions_27700(tile, slice(0, tile.size_px))
    inside = vectorized.contains(area, x, y)
    rows = list(layer.getFeatures())
    assert len(rows) == len(layout.datatakes)
    checked = 0
    for f in rows[::7]:
        d = next(d for d in layout.datatakes if f"{d.satellite}_{d.sensing:%Y%m%dT%H%M%S}" == f["datatake_id"])
        values = sa.render_scl(layout, sa.DatatakeFields(layout, d), sa.Product(d, tile))[inside]
        valid = np.count_nonzero(values > 1)
        assert f["aoi_valid_pct"] == pytest.approx(100 * valid / values.size)
        if valid:
            assert f["aoi_cloud_pct"] == pytest.approx(100 * np.isin(values, [8, 9, 10]).sum() / valid)
            checked += 1
    assert checked > 5


def test_count_shadows_and_buffer_raise_the_cloud_share(provider, scenes_layer, sample_archive, tmp_path):
    from qgis import processing
    from qgis.core import QgsProcessing, QgsVectorLayer

    def run(**extra):
        result = processing.run("cloudprob:screenscenes", {
            "SCENES": scenes_layer, "AOI": _aoi_27700(sample_archive, shrink=1500), "OUTPUT": QgsProcessing.TEMPORARY_OUTPUT, **extra})
        layer = result["OUTPUT"] if not isinstance(result["OUTPUT"], str) else QgsVectorLayer(result["OUTPUT"])
        return {f["datatake_id"]: f["aoi_cloud_pct"] for f in layer.getFeatures() if f["aoi_cloud_pct"] is not None}

    plain, shadows, grown = run(), run(COUNT_SHADOWS=True), run(BUFFER=100)
    assert all(shadows[k] >= plain[k] for k in plain) and sum(shadows.values()) > sum(plain.values())
    assert all(grown[k] >= plain[k] - 1e-9 for k in plain) and sum(grown.values()) > sum(plain.values())


def test_screen_errors(provider, scenes_layer, tmp_path):
    from qgis import processing
    from qgis.core import QgsProcessing, QgsProcessingException, QgsVectorLayer

    with pytest.raises(QgsProcessingException, match="area of interest"):
        processing.run("cloudprob:screenscenes", {"SCENES": scenes_layer, "OUTPUT": QgsProcessing.TEMPORARY_OUTPUT})
    with pytest.raises(QgsProcessingException, match="not an SCL class"):
        processing.run("cloudprob:screenscenes", {
            "SCENES": scenes_layer, "AOI": "0,1,51,52 [EPSG:4326]", "CLOUD_CLASSES": "8,99", "OUTPUT": QgsProcessing.TEMPORARY_OUTPUT})
    plain = QgsVectorLayer("Polygon?crs=EPSG:4326&field=name:string", "plain", "memory")
    with pytest.raises(QgsProcessingException, match="stac_item"):
        processing.run("cloudprob:screenscenes", {"SCENES": plain, "AOI": "0,1,51,52 [EPSG:4326]", "OUTPUT": QgsProcessing.TEMPORARY_OUTPUT})


def test_cloudmask_of_one_scene_matches_its_scl(provider, scenes_layer, sample_servers, sample_archive, tmp_path):
    from qgis import processing
    from qgis.core import QgsApplication, QgsProcessingContext, QgsProcessingFeedback, QgsProject, QgsRasterLayer

    scene = next(s for s in served_scenes(sample_servers) if s.mgrs_tile == "30UYC" and 20 < (s.scene_cloud or 0) < 60)
    out = tmp_path / "mask.tif"
    result = processing.run("cloudprob:cloudmask", {
        "SCENES": scenes_layer, "SCENE_ID": scene.item_id, "AOI": _aoi_27700(sample_archive, shrink=800), "OUTPUT": str(out)})
    with rasterio.open(result["OUTPUT"]) as ds:
        mask, transform, crs = ds.read(1), ds.transform, ds.crs
        assert ds.nodata == 255 and crs.to_epsg() == 32630 and ds.res == (20.0, 20.0)
    scl_path = sample_archive / scene.item["assets"]["scl"]["href"].split(sample_servers.cogs.url + "/")[-1]
    with rasterio.open(scl_path) as src:
        col0, row0 = ~src.transform * (transform.c, transform.f)
        scl = src.read(1)[int(round(row0)):int(round(row0)) + mask.shape[0], int(round(col0)):int(round(col0)) + mask.shape[1]]
    inside = mask != 255
    expected = np.select([np.isin(scl, [0, 1]), np.isin(scl, [8, 9, 10]), scl == 3, scl == 11], [255, 1, 2, 3], 0)
    assert inside.sum() > 1000 and (mask[inside] == expected[inside]).all()
    assert set(np.unique(mask)) <= {0, 1, 2, 3, 255}

    # loaded with the palette and legend
    alg = QgsApplication.processingRegistry().createAlgorithmById("cloudprob:cloudmask")
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    from qgis.core import QgsProcessingOutputLayerDefinition

    params = {"SCENES": scenes_layer, "SCENE_ID": scene.item_id, "AOI": _aoi_27700(sample_archive, shrink=800),
              "OUTPUT": QgsProcessingOutputLayerDefinition(str(tmp_path / "mask2.tif"), QgsProject.instance())}
    feedback = QgsProcessingFeedback()
    results, ok = alg.run(params, context, feedback)
    assert ok, feedback.textLog()
    details = context.layersToLoadOnCompletion()[results["OUTPUT"]]
    layer = QgsRasterLayer(results["OUTPUT"], "mask")
    details.postProcessor().postProcessLayer(layer, context, feedback)
    legend = {c.value: c.label for c in layer.renderer().classes()}
    assert legend == {0: "clear", 1: "cloud", 2: "cloud shadow", 3: "snow / ice"}


def test_cloudmask_s2cloudless_on_real_l1c(provider, l1c_servers, realdata, tmp_path):
    """s2cloudless on the five real L1C reference scenes served as COGs: equal to the detector
    run directly on eo-learn's reflectances with s2cloudless's published 10 m settings (a 4-pixel
    averaging disc, a 2-pixel dilation, threshold 0.4), for baseline 05.09 (DN offset 1000) and
    03.01 (none)."""
    from qgis import processing
    import realdata_archives
    from qgis.core import QgsVectorLayer
    from s2cloudless import S2PixelCloudDetector

    from cloud_probability.processing_provider.search_scenes import scene_feature, scene_fields

    scenes = served_scenes(l1c_servers)
    fields = scene_fields()
    layer = QgsVectorLayer("MultiPolygon?crs=EPSG:4326", "l1c", "memory")
    layer.dataProvider().addAttributes(fields.toList())
    layer.updateFields()
    layer.dataProvider().addFeatures([scene_feature(s, layer.fields()) for s in scenes])
    reference = realdata_archives.reference_scenes(realdata)
    detector = S2PixelCloudDetector(threshold=0.4, average_over=4, dilation_size=2, all_bands=False)
    bands10 = [0, 1, 3, 4, 7, 8, 9, 10, 11, 12]  # B01 B02 B04 B05 B08 B8A B09 B10 B11 B12
    patch = realdata_archives.eolearn_patch(realdata)
    x0, y0, x1, y1 = patch["bounds"]
    shares = {}
    for scene in scenes:
        k = int(scene.datetime[8:10]) - 1
        out = tmp_path / f"{scene.item_id}.tif"
        processing.run("cloudprob:cloudmask", {
            "SCENES": layer, "SCENE_ID": scene.item_id, "MASK_SOURCE": 4, "RESOLUTION": 10,
            "AOI": f"{x0},{x1},{y0},{y1} [EPSG:32633]", "OUTPUT": str(out)})
        with rasterio.open(out) as ds:
            mask = ds.read(1)
        expected = detector.get_cloud_masks(reference[k][np.newaxis][..., bands10])[0]
        valid = mask != 255
        assert valid.mean() > 0.97
        agreement = (mask[valid] == expected[valid]).mean()
        assert agreement > 0.995, (scene.item_id, agreement)
        shares[(k, scene.processing_baseline)] = mask[valid].mean()
    for k in range(5):
        assert shares[(k, "05.09")] == pytest.approx(shares[(k, "03.01")], abs=0.005)
    assert shares[(0, "05.09")] > 0.9 and shares[(4, "05.09")] < 0.05  # a cloudy and a clear scene


def test_s2cloudless_on_l2a_scene_says_what_is_missing(provider, scenes_layer):
    from qgis import processing
    from qgis.core import QgsProcessing, QgsProcessingException

    with pytest.raises(QgsProcessingException, match="no L1C band"):
        processing.run("cloudprob:cloudmask", {"SCENES": scenes_layer, "MASK_SOURCE": 4, "OUTPUT": QgsProcessing.TEMPORARY_OUTPUT})
