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
    """The table holds every acquisition within the limits, with the area's cloud and valid
    shares the generator drew (sample_truth), over a 1 km area inside one tile."""
    import sample_truth as st
    from qgis.core import QgsCoordinateReferenceSystem, QgsProject, QgsRectangle
    from qgis.PyQt.QtCore import Qt

    from cloud_probability.sampledata import sample_archive as sa

    layout = sa.make_layout(sa.SampleSpec.small())
    area = st.interior_box(sa, layout, "30UYC", 1000.0)
    dock.set_drawn_extent(QgsRectangle(*area.bounds), QgsCoordinateReferenceSystem("EPSG:27700"))
    with qtbot.waitSignal(dock.finished, timeout=180_000) as blocker:
        dock.search()
        assert not dock.search_button.isEnabled() and dock.cancel_button.isEnabled()  # it runs in the background
    assert blocker.args == [True], dock.status.text()
    truth = st.acquisition_truths(sa, layout, area, 27700, "30UYC")
    kept = sorted((day, t.cloud_pct, t.valid_pct) for day, t in truth.items()
                  if t.cloud_pct is not None and t.cloud_pct <= 30 and t.valid_pct >= 50)
    assert dock.table.rowCount() == len(kept) > 3
    shown = sorted((row["date"], row["area"], row["valid"]) for row in dock.rows)
    assert [s[0] for s in shown] == [k[0] for k in kept]
    assert [s[1:] for s in shown] == [pytest.approx(k[1:], abs=1e-9) for k in kept]
    dock.table.sortItems(4, Qt.AscendingOrder)
    column = [dock.table.item(r, 4).value for r in range(dock.table.rowCount())]
    assert column == pytest.approx(sorted(k[1] for k in kept), abs=1e-9)
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
