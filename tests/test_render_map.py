"""The print-ready PNG map (scripts/render_map.py): its layout items and their text, not pixels."""
from __future__ import annotations

import csv
import re
import subprocess
import sys
from datetime import date

import numpy as np
import pytest

from cloud_probability.processing_provider.styling import equal_interval_breaks


@pytest.fixture()
def small_areas(sample_archive, tmp_path):
    """The sample archive's small areas with the truth's mean cloud probability (%), one without data."""
    import geopandas as gpd

    zones = gpd.read_file(sample_archive / "zones" / "small_areas.gpkg", layer="small_areas")
    with open(sample_archive / "truth" / "small_areas_truth.csv") as fh:
        truth = {r["code"]: float(r["true_mean_cloud_prob_pct"]) for r in csv.DictReader(fh)}
    zones["probability_mean"] = [truth[c] for c in zones["code"]]
    zones.loc[5, "probability_mean"] = np.nan
    path = tmp_path / "small_areas.gpkg"
    zones.to_file(path, layer="small_areas", driver="GPKG")
    values = zones["probability_mean"].dropna()
    return path, float(values.min()), float(values.max())


def test_round_equal_intervals():
    assert equal_interval_breaks(26.41, 47.05) == ([25, 30, 35, 40, 45, 50], 5)
    assert equal_interval_breaks(56.3, 68.9) == ([55, 57.5, 60, 62.5, 65, 67.5, 70], 2.5)
    breaks, step = equal_interval_breaks(0.31, 0.9)
    assert step == 0.1 and breaks == pytest.approx([0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    assert equal_interval_breaks(40.0, 40.0)[0][0] <= 40.0 <= equal_interval_breaks(40.0, 40.0)[0][-1]


def test_period_and_attribution_follow_the_dates():
    import render_map

    assert render_map.attribution(date(2024, 1, 1), date(2024, 12, 31)) == "Contains modified Copernicus Sentinel data 2024"
    assert render_map.attribution(date(2023, 12, 1), date(2024, 11, 30)) == \
        "Contains modified Copernicus Sentinel data 2023–2024"
    assert render_map.period_text(date(2024, 3, 1), date(2024, 8, 31)) == "1 Mar – 31 Aug 2024"
    assert render_map.period_text(date(2023, 12, 1), date(2024, 2, 29)) == "1 Dec 2023 – 29 Feb 2024"
    assert render_map.title_text("frequency", "Leeds", date(2024, 3, 1), date(2024, 8, 31)) == \
        "Cloud frequency per small area, Leeds, 1 Mar – 31 Aug 2024"


def test_the_layout_has_what_a_printed_map_needs(qgis_app, small_areas, tmp_path):
    from qgis.core import (
        QgsLayoutItemLabel, QgsLayoutItemLegend, QgsLayoutItemMap, QgsLayoutItemPicture, QgsLayoutItemScaleBar,
        QgsProject, QgsUnitTypes, QgsVectorLayer,
    )
    from qgis.PyQt.QtCore import Qt
    from qgis.PyQt.QtGui import QImage

    import render_map

    path, low, high = small_areas
    QgsProject.instance().removeAllMapLayers()
    layer = QgsVectorLayer(f"{path}|layername=small_areas", "small areas", "ogr")
    layout = render_map.build_layout(QgsProject.instance(), layer, "Greenwich, London", date(2024, 1, 1),
                                     date(2024, 12, 31))
    items = layout.items()

    def of(kind):
        return [i for i in items if isinstance(i, kind)]

    labels = [label.text() for label in of(QgsLayoutItemLabel)]
    assert "Annual mean cloud probability per small area, Greenwich, London, 2024" in labels
    assert "Contains modified Copernicus Sentinel data 2024" in labels
    assert any(text.startswith("Map projection:") and "EPSG:27700" in text for text in labels)

    (map_item,) = of(QgsLayoutItemMap)
    assert map_item.extent().contains(layer.extent()) and map_item.crs().authid() == "EPSG:27700"
    (scale,) = of(QgsLayoutItemScaleBar)
    assert scale.linkedMap() is map_item and scale.units() == QgsUnitTypes.DistanceUnit.DistanceKilometers and scale.unitLabel() == "km"
    (arrow,) = of(QgsLayoutItemPicture)
    assert arrow.linkedMap() is map_item and "NorthArrow" in arrow.picturePath()
    assert __import__("os").path.exists(arrow.picturePath())

    # one legend: the unit once (its title), the classes' rule stated, the classes without units
    (legend,) = of(QgsLayoutItemLegend)
    assert legend.title() == "Mean cloud probability (%)"
    root = legend.model().rootGroup()
    texts, classes = [], []
    for node in root.findLayers():
        texts.append(node.name())
        for child in legend.model().layerLegendNodes(node):
            texts.append(child.data(Qt.ItemDataRole.DisplayRole))
            if node.layer() is layer:
                classes.append(child.data(Qt.ItemDataRole.DisplayRole))
    assert sum(t.count("%") for t in texts + [legend.title()]) == 1
    # every text lies whole on the page, with a long place name too (the demo's title once ran
    # past the page's right edge)
    for place in ("Greenwich, London", "Royal Borough of Greenwich, London (sample archive, synthetic)"):
        built = render_map.build_layout(QgsProject.instance(), layer, place, date(2024, 1, 1), date(2024, 12, 31))
        page = built.pageCollection().page(0).sceneBoundingRect()
        texts_on_page = [i for i in built.items() if isinstance(i, QgsLayoutItemLabel)]
        assert any(place in i.text() for i in texts_on_page)
        for item in texts_on_page:
            assert page.contains(item.sceneBoundingRect()), (item.text(), item.sceneBoundingRect(), page)
    statement = next(t for t in texts if t.startswith("Classes: equal intervals"))
    step = float(re.search(r"of ([\d.]+) percentage points", statement).group(1))
    bounds = [tuple(float(v) for v in c.split(" – ")) for c in classes]
    assert len(bounds) >= 4 and all(hi - lo == pytest.approx(step) for lo, hi in bounds)
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    assert bounds[0][0] <= low < bounds[0][1] and bounds[-1][0] < high <= bounds[-1][1]  # the data's own range
    assert "No data" in texts  # the area without data is drawn and named
    # sequential: one hue, darker as the probability rises
    colours = [r.symbol().color() for r in layer.renderer().ranges()]
    assert all(a.lightness() > b.lightness() for a, b in zip(colours, colours[1:]))
    assert all(195 <= c.hue() <= 225 for c in colours)  # blues: a diverging palette would cross hues

    png = tmp_path / "map.png"
    assert render_map.export_png(layout, str(png), dpi=100)
    image = QImage(str(png))
    assert abs(image.width() - 297 / 25.4 * 100) <= 1 and abs(image.height() - 210 / 25.4 * 100) <= 1  # A4 landscape


def test_the_command_line_writes_the_png(small_areas, tmp_path):
    from pathlib import Path

    path, _, _ = small_areas
    script = Path(__file__).resolve().parent.parent / "scripts" / "render_map.py"
    out = tmp_path / "m.png"
    run = subprocess.run([sys.executable, str(script), str(path), str(out), "--place", "Greenwich",
                          "--start", "2024-01-01", "--end", "2024-12-31"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert out.stat().st_size > 10_000 and "ERROR" not in run.stderr
    missing = subprocess.run([sys.executable, str(script), str(path), str(out)], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "--place" in missing.stderr
