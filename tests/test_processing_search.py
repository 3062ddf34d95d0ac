"""cloudprob:searchscenes through processing.run, the styling post-processor, and qgis_process."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from cloud_probability.sampledata.sample_archive import aoi_lonlat

ROOT = Path(__file__).resolve().parent.parent
FIELDS = [
    "item_id", "collection", "datetime", "platform", "mgrs_tile", "epsg", "relative_orbit", "scene_cloud",
    "nodata_pct", "processing_baseline", "datatake_id", "stac_item",
]


def _items(archive):
    return json.loads((archive / "items" / "items.json").read_text())["features"]


def _aoi_27700(archive) -> str:
    xmin, ymin, xmax, ymax = json.loads((archive / "archive.json").read_text())["aoi_27700"]
    return f"{xmin},{xmax},{ymin},{ymax} [EPSG:27700]"


def test_provider_and_algorithm_are_registered(provider):
    from qgis.core import QgsApplication

    assert provider.id() == "cloudprob" and provider.name() == "Cloud probability (Sentinel-2)"
    alg = QgsApplication.processingRegistry().algorithmById("cloudprob:searchscenes")
    assert alg is not None and alg.canExecute()[0]
    names = [p.name() for p in alg.parameterDefinitions()]
    assert names == ["STAC_URL", "COLLECTION", "AOI", "START_DATE", "END_DATE", "MAX_SCENE_CLOUD", "MAX_ITEMS", "OUTPUT"]
    assert alg.parameterDefinition("STAC_URL").defaultValue() == "https://earth-search.aws.element84.com/v1"
    assert alg.parameterDefinition("COLLECTION").defaultValue() == "sentinel-2-c1-l2a"


def test_search_writes_one_footprint_per_scene(provider, sample_servers, sample_archive, tmp_path):
    from qgis import processing
    from qgis.core import QgsVectorLayer

    out = tmp_path / "scenes.gpkg"
    result = processing.run(
        "cloudprob:searchscenes",
        {
            "STAC_URL": sample_servers.stac.url,
            "AOI": _aoi_27700(sample_archive),  # any CRS: transformed to EPSG:4326 for the search
            "START_DATE": "2024-04-01",
            "END_DATE": "2024-04-30",
            "MAX_SCENE_CLOUD": 60,
            "OUTPUT": str(out),
        },
    )
    layer = QgsVectorLayer(result["OUTPUT"], "scenes", "ogr")
    assert layer.isValid() and layer.crs().authid() == "EPSG:4326"
    assert [f.name() for f in layer.fields() if f.name() != "fid"] == FIELDS
    expected = {
        f["id"]: f for f in _items(sample_archive)
        if f["properties"]["datetime"].startswith("2024-04") and f["properties"]["eo:cloud_cover"] <= 60
    }
    got = {f["item_id"]: f for f in layer.getFeatures()}
    assert set(got) == set(expected) and len(got) > 5
    for item_id, feature in got.items():
        item = expected[item_id]
        assert json.loads(feature["stac_item"])["id"] == item_id
        assert feature["epsg"] == item["properties"]["proj:epsg"]
        assert feature["mgrs_tile"] == item["properties"]["grid:code"][5:]
        assert feature["relative_orbit"] in (94, 137)
        assert feature["scene_cloud"] == pytest.approx(item["properties"]["eo:cloud_cover"])
        assert feature["datetime"].isValid() and feature["datetime"].date().month() == 4
        assert feature["datatake_id"].startswith(("S2A_2024", "S2B_2024"))
        assert not feature.geometry().isEmpty()


def test_bad_input_fails_clearly_and_writes_nothing(provider, sample_servers, sample_archive, tmp_path):
    from qgis import processing
    from qgis.core import QgsProcessingException

    out = tmp_path / "never.gpkg"
    base = {"STAC_URL": sample_servers.stac.url, "AOI": _aoi_27700(sample_archive), "OUTPUT": str(out)}
    with pytest.raises(QgsProcessingException, match="before the start date"):
        processing.run("cloudprob:searchscenes", {**base, "START_DATE": "2024-05-01", "END_DATE": "2024-04-01"})
    with pytest.raises(QgsProcessingException, match="no collection 'landsat-c2-l2'"):
        processing.run("cloudprob:searchscenes", {**base, "COLLECTION": "landsat-c2-l2", "START_DATE": "2024-01-01", "END_DATE": "2024-01-31"})
    with pytest.raises(QgsProcessingException, match="No scenes"):
        processing.run("cloudprob:searchscenes", {**base, "START_DATE": "2020-01-01", "END_DATE": "2020-01-31"})
    assert not out.exists()


def test_cancel_writes_nothing(provider, sample_servers, sample_archive, tmp_path):
    from qgis import processing
    from qgis.core import QgsProcessingFeedback

    class CancelOnFirstPage(QgsProcessingFeedback):
        def pushInfo(self, info):  # noqa: N802
            super().pushInfo(info)
            if info.startswith("Page "):
                self.cancel()

    out = tmp_path / "cancelled.gpkg"
    feedback = CancelOnFirstPage()
    result = processing.run(
        "cloudprob:searchscenes",
        {"STAC_URL": sample_servers.stac.url, "AOI": _aoi_27700(sample_archive), "START_DATE": "2024-01-01",
         "END_DATE": "2024-12-31", "OUTPUT": str(out)},
        feedback=feedback,
    )
    assert feedback.isCanceled() and result.get("OUTPUT") is None and not out.exists()


def test_output_is_loaded_styled(provider, sample_servers, sample_archive):
    """The post-processor the algorithm attaches styles the layer QGIS loads."""
    from qgis.core import QgsApplication, QgsProcessingContext, QgsProcessingFeedback, QgsProject

    alg = QgsApplication.processingRegistry().createAlgorithmById("cloudprob:searchscenes")
    project = QgsProject.instance()
    context = QgsProcessingContext()
    context.setProject(project)
    feedback = QgsProcessingFeedback()
    params = {"STAC_URL": sample_servers.stac.url, "AOI": _aoi_27700(sample_archive), "START_DATE": "2024-02-01",
              "END_DATE": "2024-02-10", "OUTPUT": "TEMPORARY_OUTPUT"}
    from qgis.core import QgsProcessingOutputLayerDefinition

    params["OUTPUT"] = QgsProcessingOutputLayerDefinition("TEMPORARY_OUTPUT", project)
    results, ok = alg.run(params, context, feedback)
    assert ok, feedback.textLog()
    to_load = context.layersToLoadOnCompletion()
    assert results["OUTPUT"] in to_load
    details = to_load[results["OUTPUT"]]
    assert details.name == "Sentinel-2 scenes" and details.postProcessor() is not None
    layer = context.getMapLayer(results["OUTPUT"])
    details.postProcessor().postProcessLayer(layer, context, feedback)
    symbol = layer.renderer().symbol()
    assert symbol.symbolLayer(0).strokeColor().name() == "#2b5f8a"
    assert symbol.symbolLayer(0).fillColor().alpha() < 64  # footprints stay see-through


def test_qgis_process_end_to_end(sample_servers, sample_archive, tmp_path):
    west, south, east, north = aoi_lonlat(sample_archive)
    out = tmp_path / "scenes.gpkg"
    run = subprocess.run(
        [str(ROOT / "scripts" / "qgis_process"), "--json", "run", "cloudprob:searchscenes", "--",
         f"STAC_URL={sample_servers.stac.url}", f"AOI={west},{east},{south},{north} [EPSG:4326]",
         "START_DATE=2024-06-01", "END_DATE=2024-06-30", "MAX_SCENE_CLOUD=50", f"OUTPUT={out}"],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(run.stdout)
    assert report["results"]["OUTPUT"] == str(out)
    import geopandas as gpd

    scenes = gpd.read_file(out)
    expected = {
        f["id"] for f in _items(sample_archive)
        if f["properties"]["datetime"].startswith("2024-06") and f["properties"]["eo:cloud_cover"] <= 50
    }
    assert set(scenes["item_id"]) == expected and len(expected) > 3
