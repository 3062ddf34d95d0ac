"""cloudprob:clearcomposite: the median of clear observations only."""
from __future__ import annotations

import json

import pytest
import rasterio
from conftest import served_scenes

from cloud_probability.core.composite import CompositeError, boa_offset, clear_composite
from cloud_probability.core.frequency import grid_for_area
from cloud_probability.core.masks import PRESETS
from cloud_probability.core.stac import normalise_item
from cloud_probability.sampledata import sample_archive as sa


def _grid(archive, half=1500.0, res=10.0):
    x0, y0, x1, y1 = json.loads((archive / "archive.json").read_text())["aoi_27700"]
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return grid_for_area((cx - half, cy - half, cx + half, cy + half), "EPSG:27700", res)


def test_no_cloud_where_the_truth_has_a_clear_observation(sample_servers, sample_archive, tmp_path):
    grid = _grid(sample_archive)
    result = clear_composite(served_scenes(sample_servers), grid, PRESETS["scl"], str(tmp_path / "c.tif"), tile_px=200)
    layout = sa.make_layout(sa.SampleSpec.small())
    with_rgb = [d.index for d in layout.datatakes if d.index % sa.SampleSpec.small().truecolor_every == 0]
    # the generator's own count of clear observations (clear SCL classes) per composite pixel
    _, clear = sa.observation_counts(sa.SampleSpec.small(), 27700, grid.transform, grid.shape,
                                     cloud_classes=(2, 4, 5, 6, 7), datatakes=with_rgb)
    with rasterio.open(tmp_path / "c.tif") as ds:
        rgb = ds.read()
        assert ds.count == 3 and ds.nodata == 0 and ds.descriptions == ("red", "green", "blue")
    has_clear = clear > 0
    assert has_clear.sum() > 10_000 and (rgb[:, has_clear] > 0).all()
    assert (rgb[:, ~has_clear] == 0).all()  # no clear observation: no data, never a cloudy value
    # clouds reflect ≥ 0.18 (thin cirrus) in every band; the brightest clear land is ~0.12
    assert rgb[:, has_clear].max() < 1500
    assert result.acquisitions == len(with_rgb) and result.skipped > 0


def test_boa_offset_follows_baseline_and_catalogue(realdata):
    page = realdata / "earthsearch_stac" / "es_v1_search_cc-lte-40_2024-08-09_page1.json"
    item = next(f for f in json.loads(page.read_text())["features"] if f["id"] == "S2B_25LBG_20240809_0_L2A")
    assert boa_offset(normalise_item(item)) == 0.0  # earthsearch:boa_offset_applied: true
    item["properties"]["earthsearch:boa_offset_applied"] = False
    assert boa_offset(normalise_item(item)) == -1000.0  # baseline 05.11 ≥ 04.00
    item["properties"]["s2:processing_baseline"] = "03.01"
    assert boa_offset(normalise_item(item)) == 0.0


def test_scenes_without_the_bands_are_refused(sample_servers, sample_archive, tmp_path):
    scenes = [s for s in served_scenes(sample_servers) if not s.asset_href("red")][:10]
    with pytest.raises(CompositeError, match="red, green, blue"):
        clear_composite(scenes, _grid(sample_archive, 300), PRESETS["scl"], str(tmp_path / "x.tif"))
    assert not (tmp_path / "x.tif").exists()


def test_processing_clearcomposite_loads_as_rgb(provider, sample_servers, sample_archive, tmp_path):
    from qgis import processing
    from qgis.core import (
        QgsApplication, QgsProcessingContext, QgsProcessingFeedback, QgsProcessingOutputLayerDefinition, QgsProject,
        QgsRasterLayer,
    )

    x0, y0, x1, y1 = json.loads((sample_archive / "archive.json").read_text())["aoi_27700"]
    scenes = tmp_path / "scenes.gpkg"
    processing.run("cloudprob:searchscenes", {"STAC_URL": sample_servers.stac.url, "AOI": f"{x0},{x1},{y0},{y1} [EPSG:27700]",
                                              "START_DATE": "2024-04-01", "END_DATE": "2024-09-30", "OUTPUT": str(scenes)})
    alg = QgsApplication.processingRegistry().createAlgorithmById("cloudprob:clearcomposite")
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    feedback = QgsProcessingFeedback()
    results, ok = alg.run({"SCENES": str(scenes), "AOI": f"{x0},{x1},{y0},{y1} [EPSG:27700]", "TARGET_CRS": "EPSG:27700",
                           "OUTPUT": QgsProcessingOutputLayerDefinition(str(tmp_path / "rgb.tif"), QgsProject.instance())},
                          context, feedback)
    assert ok, feedback.textLog()
    assert "clear observations" in feedback.textLog()
    layer = QgsRasterLayer(results["OUTPUT"], "rgb")
    context.layersToLoadOnCompletion()[results["OUTPUT"]].postProcessor().postProcessLayer(layer, context, feedback)
    renderer = layer.renderer()
    assert renderer.type() == "multibandcolor" and (renderer.redBand(), renderer.greenBand(), renderer.blueBand()) == (1, 2, 3)
    assert renderer.redContrastEnhancement().maximumValue() == 2500
    with rasterio.open(results["OUTPUT"]) as ds:
        assert ds.res == (10.0, 10.0) and ds.crs.to_epsg() == 27700
    from osgeo import gdal

    info = gdal.Info(results["OUTPUT"], format="json")
    assert info["metadata"]["IMAGE_STRUCTURE"]["LAYOUT"] == "COG"
