"""The "Cloud probability" dock, driven with pytest-qt against the loopback servers."""
from __future__ import annotations


import pytest
from conftest import served_scenes

from cloud_probability.core.masks import PRESETS
from cloud_probability.core.screening import screen_scenes

GREENWICH = (538_900.0, 177_600.0)


@pytest.fixture()
def dock(qgis_iface, provider, qtbot, sample_servers):
    from qgis.core import QgsCoordinateReferenceSystem, QgsProject, QgsRectangle
    from qgis.PyQt.QtCore import QDate

    from cloud_probability.ui.dock import CloudProbabilityDock

    QgsProject.instance().removeAllMapLayers()
    widget = CloudProbabilityDock(qgis_iface)
    qtbot.addWidget(widget)
    widget.catalogue.setCurrentIndex(2)  # custom STAC API
    widget.url.setText(sample_servers.stac.url)
    widget.collection.setText("sentinel-2-c1-l2a")  # the sample archive's; a saved setting may say otherwise
    widget.start.setDate(QDate(2024, 1, 1))
    widget.end.setDate(QDate(2024, 12, 31))
    gx, gy = GREENWICH
    widget.set_drawn_extent(QgsRectangle(gx - 900, gy - 900, gx + 900, gy + 900), QgsCoordinateReferenceSystem("EPSG:27700"))
    widget.max_area_cloud.setValue(30.0)
    widget.min_valid.setValue(50.0)
    return widget


def test_search_fills_the_table_chart_and_map(dock, qtbot, sample_servers):
    from qgis.core import QgsProject
    from qgis.PyQt.QtCore import Qt

    with qtbot.waitSignal(dock.finished, timeout=180_000) as blocker:
        dock.search()
        assert not dock.search_button.isEnabled() and dock.cancel_button.isEnabled()  # it runs in the background
    assert blocker.args == [True], dock.status.text()
    # the same screening straight through core
    from shapely.geometry import box

    gx, gy = GREENWICH
    expected = screen_scenes(served_scenes(sample_servers), box(gx - 900, gy - 900, gx + 900, gy + 900), 27700, PRESETS["scl"])
    kept = [o for o in expected.observations if o.cloud_pct is not None and o.cloud_pct <= 30 and o.fractions.valid_pct >= 50]
    assert dock.table.rowCount() == len(kept) > 3
    areas = sorted(o.cloud_pct for o in kept)
    dock.table.sortItems(4, Qt.AscendingOrder)
    shown = [dock.table.item(r, 4).value for r in range(dock.table.rowCount())]
    assert shown == pytest.approx(areas, abs=1e-9)
    assert dock.progress.value() == 100 and dock.search_button.isEnabled()
    assert dock.screened_layer is not None and dock.screened_layer.id() in QgsProject.instance().mapLayers()

    # a click on the chart selects the nearest acquisition, and its footprint on the map
    from matplotlib.dates import date2num
    from datetime import date

    target = dock.rows[2]
    event = type("Event", (), {"xdata": date2num(date.fromisoformat(target["date"]))})()
    dock.chart._clicked(event)
    assert dock.selected_row() is target
    assert dock.highlighted_fid == target["fid"] and dock.highlight.isVisible()  # outlined on the map

    # the selected scene as true colour (if it has it) and SCL layers with the class palette
    added = dock.add_selected_scene()
    names = [layer.name() for layer in added]
    scl = next(layer for layer in added if layer.name().endswith("SCL"))
    assert scl.isValid() and scl.renderer().type() == "paletted" and len(scl.renderer().classes()) == 11
    assert all(layer.id() in QgsProject.instance().mapLayers() for layer in added), names


def test_cancel_midway(dock, qtbot):
    from qgis.core import QgsRectangle

    from cloud_probability.sampledata.sample_archive import SampleSpec, make_layout

    layout = make_layout(SampleSpec.small())
    x0, y0, x1, y1 = layout.aoi
    dock.set_drawn_extent(QgsRectangle(x0, y0, x1, y1), dock.drawn_crs)
    dock.concurrency.setValue(1)
    with qtbot.waitSignal(dock.finished, timeout=180_000) as blocker:
        dock.search()
        qtbot.waitUntil(lambda: dock.status.text().startswith("Reading"), timeout=60_000)
        dock.cancel()
    assert blocker.args == [False]
    assert "cancelled" in dock.status.text() and dock.search_button.isEnabled()
    assert dock.table.rowCount() == 0


def test_settings_are_remembered_and_model_prefilled(dock, qtbot, sample_servers, qgis_iface):
    from cloud_probability.ui.dock import CloudProbabilityDock

    dock.max_area_cloud.setValue(12.5)
    dock.save_settings()
    again = CloudProbabilityDock(qgis_iface)
    qtbot.addWidget(again)
    assert again.max_area_cloud.value() == 12.5 and again.url.text() == sample_servers.stac.url
    params = dock.model_parameters()
    assert params["STAC_URL"] == sample_servers.stac.url and params["START_DATE"] == "2024-01-01"
    assert params["AOI"].endswith("[EPSG:27700]")


def test_bad_input_is_said_not_searched(dock):
    from qgis.PyQt.QtCore import QDate

    dock.end.setDate(QDate(2023, 1, 1))
    dock.search()
    assert "before the start" in dock.status.text() and dock.task is None
    dock.area_layer.setChecked(True)
    dock.search()
    assert "polygon layer" in dock.status.text()
