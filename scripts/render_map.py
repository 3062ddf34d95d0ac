"""Render the small-area result as a PNG map with a legend through a QGIS print layout.

    QT_QPA_PLATFORM=offscreen python scripts/render_map.py SMALL_AREAS.gpkg OUT.png [TITLE]
"""
from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    from qgis.core import (
        QgsApplication, QgsClassificationQuantile, QgsGraduatedSymbolRenderer, QgsLayoutExporter, QgsLayoutItemLabel,
        QgsLayoutItemLegend, QgsLayoutItemMap, QgsLayoutItemScaleBar, QgsLayoutPoint, QgsLayoutSize, QgsPrintLayout,
        QgsProject, QgsStyle, QgsUnitTypes, QgsVectorLayer,
    )
    from qgis.PyQt.QtGui import QFont

    gpkg, png = argv[0], argv[1]
    title = argv[2] if len(argv) > 2 else "Annual cloud probability per small area"
    app = QgsApplication([], False)
    app.initQgis()
    layer = QgsVectorLayer(f"{gpkg}|layername=small_areas", "Cloud probability (%)", "ogr")
    if not layer.isValid():
        print(f"cannot open {gpkg}", file=sys.stderr)
        return 1
    renderer = QgsGraduatedSymbolRenderer("probability_mean")
    renderer.setClassificationMethod(QgsClassificationQuantile())
    renderer.updateClasses(layer, 7)
    ramp = QgsStyle.defaultStyle().colorRamp("Blues")
    renderer.updateColorRamp(ramp)
    for index, item in enumerate(renderer.ranges()):
        renderer.updateRangeLabel(index, f"{item.lowerValue():.1f} – {item.upperValue():.1f} %")
    layer.setRenderer(renderer)
    project = QgsProject.instance()
    project.addMapLayer(layer)

    layout = QgsPrintLayout(project)
    layout.initializeDefaults()
    page = layout.pageCollection().page(0)
    page.setPageSize(QgsLayoutSize(297, 210, QgsUnitTypes.LayoutUnit.LayoutMillimeters))
    label = QgsLayoutItemLabel(layout)
    label.setText(title)
    label.setFont(QFont("DejaVu Sans", 16))
    label.adjustSizeToText()
    layout.addLayoutItem(label)
    label.attemptMove(QgsLayoutPoint(10, 6, QgsUnitTypes.LayoutUnit.LayoutMillimeters))
    map_item = QgsLayoutItemMap(layout)
    map_item.setRect(0, 0, 200, 185)
    map_item.setLayers([layer])
    map_item.setCrs(layer.crs())
    extent = layer.extent()
    extent.scale(1.04)
    map_item.setExtent(extent)
    layout.addLayoutItem(map_item)
    map_item.attemptMove(QgsLayoutPoint(10, 18, QgsUnitTypes.LayoutUnit.LayoutMillimeters))
    map_item.attemptResize(QgsLayoutSize(200, 185, QgsUnitTypes.LayoutUnit.LayoutMillimeters))
    legend = QgsLayoutItemLegend(layout)
    legend.setTitle("Mean cloud probability")
    legend.setLinkedMap(map_item)
    layout.addLayoutItem(legend)
    legend.attemptMove(QgsLayoutPoint(218, 18, QgsUnitTypes.LayoutUnit.LayoutMillimeters))
    scale = QgsLayoutItemScaleBar(layout)
    scale.setStyle("Single Box")
    scale.setLinkedMap(map_item)
    scale.applyDefaultSize()
    layout.addLayoutItem(scale)
    scale.attemptMove(QgsLayoutPoint(218, 185, QgsUnitTypes.LayoutUnit.LayoutMillimeters))
    settings = QgsLayoutExporter.ImageExportSettings()
    settings.dpi = 110
    settings.generateWorldFile = False
    result = QgsLayoutExporter(layout).exportToImage(png, settings)
    if result != QgsLayoutExporter.ExportResult.Success:
        print(f"export failed ({result})", file=sys.stderr)
        return 1
    print(png)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
