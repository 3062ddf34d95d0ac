"""Render the small-area result as a print-ready PNG map through a QGIS print layout.

    QT_QPA_PLATFORM=offscreen python scripts/render_map.py SMALL_AREAS.gpkg OUT.png \\
        --place "Greenwich, London" --start 2024-01-01 --end 2024-12-31 [--measure mean|frequency]

The page (A4 landscape) carries a title with the measure, the place and the period, a subtitle
saying what the values are, the map, one legend that states the unit once and how the classes
were made (round equal intervals on a sequential palette; areas without data shown as such), a
scale bar, a north arrow and the Copernicus attribution with the period's years.
"""
from __future__ import annotations

import argparse
import sys
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

MEASURES = {
    "mean": ("Mean cloud probability",
             "Sen2Cor's per-pixel cloud probability averaged over the valid observations"),
    "frequency": ("Cloud frequency", "share of the valid observations whose scene classification is cloud"),
}


def period_text(start: date, end: date) -> str:
    """'2024' for a calendar year, '1 Mar – 31 Aug 2024', '1 Dec 2023 – 29 Feb 2024'."""
    if (start.month, start.day, end.month, end.day) == (1, 1, 12, 31):
        return str(start.year) if start.year == end.year else f"{start.year}–{end.year}"

    def day(d: date, year: bool) -> str:
        return f"{d.day} {d:%b}" + (f" {d.year}" if year else "")

    return f"{day(start, start.year != end.year)} – {day(end, True)}"


def attribution(start: date, end: date) -> str:
    """The attribution the Sentinel data's licence asks for, with the period's year(s)."""
    years = str(start.year) if start.year == end.year else f"{start.year}–{end.year}"
    return f"Contains modified Copernicus Sentinel data {years}"


PAGE_WIDTH_MM = 297  # A4 landscape


def title_text(measure: str, place: str, start: date, end: date) -> str:
    name = MEASURES[measure][0]
    annual = (start.month, start.day, end.month, end.day) == (1, 1, 12, 31) and start.year == end.year
    measure_name = "Annual " + name[0].lower() + name[1:] if annual else name
    return f"{measure_name} per small area, {place}, {period_text(start, end)}"


def is_null(value) -> bool:
    """A NULL attribute, however this QGIS returns it (None, a null QVariant, NaN)."""
    if value is None:
        return True
    if hasattr(value, "isNull"):
        return value.isNull()
    return isinstance(value, float) and value != value


def _label(layout, text: str, size: float, bold: bool = False):
    from qgis.core import QgsLayoutItemLabel, QgsTextFormat
    from qgis.PyQt.QtGui import QFont

    label = QgsLayoutItemLabel(layout)
    label.setText(text)
    font = QFont("DejaVu Sans")
    font.setBold(bold)
    if hasattr(label, "setTextFormat"):  # QGIS ≥ 3.24 (setFont is deprecated there)
        fmt = QgsTextFormat()
        fmt.setFont(font)
        fmt.setSize(size)
        label.setTextFormat(fmt)
    else:
        font.setPointSizeF(size)
        label.setFont(font)
    label.adjustSizeToText()
    layout.addLayoutItem(label)
    return label


def _place(item, x: float, y: float, width: float | None = None, height: float | None = None) -> None:
    from qgis.core import QgsLayoutPoint, QgsLayoutSize, QgsUnitTypes

    item.attemptMove(QgsLayoutPoint(x, y, QgsUnitTypes.LayoutUnit.LayoutMillimeters))
    if width is not None:
        item.attemptResize(QgsLayoutSize(width, height, QgsUnitTypes.LayoutUnit.LayoutMillimeters))


def build_layout(project, layer, place: str, start: date, end: date, measure: str = "mean",
                 field: str = "probability_mean"):
    """The print layout of ``layer`` (small areas with ``field`` in percent), styled here."""
    from qgis.core import (
        QgsApplication, QgsFillSymbol, QgsLayoutItemLegend, QgsLayoutItemMap,
        QgsLayoutItemPicture, QgsLayoutItemScaleBar, QgsLayoutSize, QgsLegendRenderer, QgsLegendStyle,
        QgsMapLayerLegendUtils, QgsPrintLayout,
        QgsSingleSymbolRenderer, QgsUnitTypes, QgsVectorLayer,
    )

    from cloud_probability.processing_provider.styling import graduated_renderer

    renderer, statement = graduated_renderer(layer, field, unit="")
    layer.setRenderer(renderer)
    layer.setName(f"Classes: {statement.replace(' of ', chr(10) + 'of ', 1)}")  # the heading over the classes
    project.addMapLayer(layer)
    layers = [layer]
    nulls = [f.id() for f in layer.getFeatures() if is_null(f[field])]
    if nulls:  # areas without data drawn and named, not left as holes
        no_data = QgsVectorLayer(layer.source(), "No data", layer.providerType())
        no_data.setSubsetString(f'"{field}" IS NULL')
        no_data.setRenderer(QgsSingleSymbolRenderer(QgsFillSymbol.createSimple(
            {"color": "220,220,220,255", "style": "b_diagonal", "outline_color": "150,150,150,255",
             "outline_width": "0.1"})))
        project.addMapLayer(no_data)
        layers.append(no_data)

    layout = QgsPrintLayout(project)
    layout.initializeDefaults()
    layout.setName("Cloud probability per small area")
    layout.pageCollection().page(0).setPageSize(
        QgsLayoutSize(PAGE_WIDTH_MM, 210, QgsUnitTypes.LayoutUnit.LayoutMillimeters))

    # the title on one line across the page: a long place name takes a smaller size, never the edge
    for size in (17, 15, 13, 12, 11, 10):
        title = _label(layout, title_text(measure, place, start, end), size, bold=True)
        if title.sizeWithUnits().width() <= PAGE_WIDTH_MM - 20 or size == 10:
            break
        layout.removeLayoutItem(title)
    _place(title, 10, 7)
    subtitle = _label(layout, f"{MEASURES[measure][0]}: {MEASURES[measure][1]}, Sentinel-2 L2A; "
                              "per small area, the area-weighted mean of its pixels", 9)
    _place(subtitle, 10, 16)

    map_item = QgsLayoutItemMap(layout)
    map_item.setLayers(layers)
    map_item.setCrs(layer.crs())
    map_item.setFrameEnabled(True)
    extent = layer.extent()
    extent.scale(1.03)
    map_item.setRect(0, 0, 185, 170)
    map_item.setExtent(extent)  # a new map item has no extent to zoom from
    layout.addLayoutItem(map_item)
    _place(map_item, 10, 24, 185, 170)
    map_item.zoomToExtent(extent)  # the whole extent in the frame, the frame's size kept

    legend = QgsLayoutItemLegend(layout)
    legend.setTitle(f"{MEASURES[measure][0]} (%)")
    legend.setLinkedMap(map_item)
    legend.setAutoUpdateModel(False)
    root = legend.model().rootGroup()
    root.removeAllChildren()
    for lyr in layers:  # the classes under their heading; "No data" is one symbol beside its name
        node = root.addLayer(lyr)
        if lyr is layer:
            QgsLegendRenderer.setNodeLegendStyle(node, QgsLegendStyle.Style.Subgroup)
        else:
            QgsLegendRenderer.setNodeLegendStyle(node, QgsLegendStyle.Style.Hidden)
            QgsMapLayerLegendUtils.setLegendNodeUserLabel(node, 0, lyr.name())
    for node in root.findLayers():  # the user label above is read when the legend is rebuilt
        legend.model().refreshLayerLegend(node)
    legend.setColumnCount(1)
    legend.setWrapString("\n")
    layout.addLayoutItem(legend)
    legend.adjustBoxSize()
    _place(legend, 203, 24)

    arrow = QgsLayoutItemPicture(layout)
    svg = next((Path(p) / "arrows" / "NorthArrow_02.svg" for p in QgsApplication.svgPaths()
                if (Path(p) / "arrows" / "NorthArrow_02.svg").exists()), None)
    if svg is not None:
        arrow.setPicturePath(str(svg))
    arrow.setLinkedMap(map_item)
    arrow.setNorthMode(QgsLayoutItemPicture.NorthMode.GridNorth)
    layout.addLayoutItem(arrow)
    _place(arrow, 203, 140, 12, 18)

    scale = QgsLayoutItemScaleBar(layout)
    scale.setStyle("Single Box")
    scale.setLinkedMap(map_item)
    scale.setUnits(QgsUnitTypes.DistanceUnit.DistanceKilometers)
    scale.setUnitLabel("km")
    scale.setNumberOfSegmentsLeft(0)
    scale.setNumberOfSegments(2)
    scale.applyDefaultSize(QgsUnitTypes.DistanceUnit.DistanceKilometers)
    layout.addLayoutItem(scale)
    _place(scale, 203, 170)

    credit = _label(layout, attribution(start, end), 8)
    _place(credit, 10, 197)
    crs = _label(layout, f"Map projection: {layer.crs().description()} ({layer.crs().authid()})", 8)
    _place(crs, 10, 201.5)
    return layout


def export_png(layout, png: str, dpi: int = 150) -> bool:
    from qgis.core import QgsLayoutExporter

    settings = QgsLayoutExporter.ImageExportSettings()
    settings.dpi = dpi
    settings.generateWorldFile = False
    from osgeo import gdal

    gdal.PushErrorHandler("CPLQuietErrorHandler")  # QGIS tries to georeference the PNG in place: GDAL refuses
    try:
        return QgsLayoutExporter(layout).exportToImage(png, settings) == QgsLayoutExporter.ExportResult.Success
    finally:
        gdal.PopErrorHandler()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("gpkg")
    parser.add_argument("png")
    parser.add_argument("--place", required=True, help="where the areas are, e.g. 'Greenwich, London'")
    parser.add_argument("--start", required=True, type=date.fromisoformat, help="first day of the period (YYYY-MM-DD)")
    parser.add_argument("--end", required=True, type=date.fromisoformat, help="last day of the period (YYYY-MM-DD)")
    parser.add_argument("--measure", choices=sorted(MEASURES), default="mean")
    parser.add_argument("--layer", default="small_areas")
    args = parser.parse_args(argv)

    from devpaths import ensure_plugin_importable

    ensure_plugin_importable()
    from qgis.core import QgsApplication, QgsProject, QgsVectorLayer

    app = QgsApplication([], False)
    app.initQgis()
    layer = QgsVectorLayer(f"{args.gpkg}|layername={args.layer}", "small areas", "ogr")
    if not layer.isValid():
        print(f"cannot open {args.gpkg}", file=sys.stderr)
        return 1
    layout = build_layout(QgsProject.instance(), layer, args.place, args.start, args.end, args.measure)
    if not export_png(layout, args.png):
        print("export failed", file=sys.stderr)
        return 1
    print(args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
