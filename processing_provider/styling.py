"""Layer post-processors that style outputs after an algorithm (main thread, never in core)."""
from __future__ import annotations

from pathlib import Path

from qgis.core import QgsMapLayer, QgsProcessingContext, QgsProcessingLayerPostProcessorInterface

STYLES = Path(__file__).resolve().parent.parent / "ui" / "styles"


class KeptPostProcessor(QgsProcessingLayerPostProcessorInterface):
    """A post-processor kept alive until it runs, attached to an output by :meth:`attach`."""

    # Processing keeps only a raw pointer to a post-processor: hold every instance here so none
    # is garbage-collected before it runs (it runs on the main thread after the algorithm).
    _alive: dict[str, "KeptPostProcessor"] = {}

    @classmethod
    def attach(cls, context: QgsProcessingContext, layer_id: str, *args, name: str | None = None) -> None:
        """Style (and optionally rename) the output ``layer_id`` when QGIS loads it."""
        if not context.willLoadLayerOnCompletion(layer_id):
            return
        details = context.layerToLoadOnCompletionDetails(layer_id)
        if name:
            details.name = name
        processor = cls(*args)
        processor.title = name
        KeptPostProcessor._alive[f"{layer_id}:{cls.__name__}:{args}"] = processor
        details.setPostProcessor(processor)


class StylePostProcessor(KeptPostProcessor):
    """Loads a .qml style from ``ui/styles`` onto the output layer, and optionally field aliases
    (``{field: alias with unit}``: GeoPackages written through GDAL 3.6 keep none)."""

    def __init__(self, qml: str, aliases: dict | None = None):
        super().__init__()
        self.qml = qml
        self.aliases = dict(aliases or {})

    def postProcessLayer(self, layer: QgsMapLayer, context: QgsProcessingContext, feedback) -> None:  # noqa: N802
        path = STYLES / self.qml
        if layer is None or not layer.isValid():
            return
        message, ok = layer.loadNamedStyle(str(path))
        if not ok and feedback is not None:
            feedback.pushWarning(f"Could not apply the style {path.name}: {message}")
        set_aliases(layer, self.aliases)
        if getattr(self, "title", None):
            set_legend_title(layer, context, self.title)
        layer.triggerRepaint()


def set_legend_title(layer, context, title: str) -> None:
    """A raster's legend headed by what it shows (``title``, with its unit) instead of the band's
    name: QGIS heads a colour ramp's legend with "Band 1 (Gray)" (or "Band 1: <description>
    (Gray)"). Set as the layer tree's own label of that entry, which the project keeps; layers
    not in a project (qgis_process) have no legend to label."""
    from qgis.core import QgsMapLayerLegendUtils, QgsProject, QgsRasterLayer, QgsSimpleLegendNode

    if not isinstance(layer, QgsRasterLayer):
        return
    project = (context.project() if context is not None else None) or QgsProject.instance()
    node = project.layerTreeRoot().findLayer(layer.id())
    if node is None:
        return
    legend = layer.legend().createLayerTreeModelLegendNodes(node) if layer.legend() is not None else []
    if legend and isinstance(legend[0], QgsSimpleLegendNode):  # the band's name above the ramp
        QgsMapLayerLegendUtils.setLegendNodeUserLabel(node, 0, title)
        layer.legendChanged.emit()


def set_aliases(layer, aliases: dict) -> None:
    """Each field's alias (its meaning and unit) where the layer has that field."""
    for name, alias in aliases.items():
        index = layer.fields().indexOf(name)
        if index >= 0:
            layer.setFieldAlias(index, alias)


def equal_interval_breaks(low: float, high: float, target: int = 6) -> tuple[list[float], float]:
    """(class breaks, step): equal intervals of a round step (1, 2, 2.5 or 5 × 10^k, in the
    values' unit) from the multiple of the step at or below ``low`` to the one at or above
    ``high``, about ``target`` classes. A printed legend reads 55 – 57.5, not 55.13 – 57.61."""
    import math

    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError("No finite values to classify.")
    if high < low:
        low, high = high, low
    raw = max(high - low, 1e-9) / max(1, target)
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * magnitude >= raw * (1 - 1e-9))
    first = math.floor(low / step + 1e-9) * step
    count = max(1, math.ceil((high - first) / step - 1e-9))  # a value on a break is in the lower class (QGIS)
    return [round(first + i * step, 10) for i in range(count + 1)], step


def number_text(value: float) -> str:
    """55, 57.5, 0.25: no trailing zeros."""
    return f"{value:.10g}"


def graduated_renderer(layer, field: str = "probability_mean", unit: str = " %", target: int = 6):
    """(renderer, statement): a graduated renderer on ``field`` with :func:`equal_interval_breaks`
    classes on a sequential palette (Blues: more cloud, darker), each class labelled
    ``low – high`` followed by ``unit`` (empty where a legend states the unit once), and the
    sentence that states the classes ("equal intervals of 2.5 percentage points")."""
    from qgis.core import QgsGradientColorRamp, QgsGraduatedSymbolRenderer, QgsRendererRange, QgsStyle, QgsSymbol
    from qgis.PyQt.QtGui import QColor

    index = layer.fields().indexOf(field)
    values = [f[index] for f in layer.getFeatures()]
    values = [float(v) for v in values if v is not None and v == v and not (hasattr(v, "isNull") and v.isNull())]
    if not values:
        raise ValueError(f"The field {field} has no values to classify.")
    breaks, step = equal_interval_breaks(min(values), max(values), target)
    ramp = QgsStyle.defaultStyle().colorRamp("Blues") or QgsGradientColorRamp(QColor(247, 251, 255), QColor(8, 48, 107))
    ranges = []
    for i, (lo, hi) in enumerate(zip(breaks[:-1], breaks[1:])):
        symbol = QgsSymbol.defaultSymbol(layer.geometryType())
        # from a light blue, not white: the lowest class stays visible on paper
        symbol.setColor(ramp.color(0.15 + 0.85 * i / max(1, len(breaks) - 2)))
        if symbol.symbolLayerCount():
            symbol.symbolLayer(0).setStrokeColor(QColor(255, 255, 255, 160))
            symbol.symbolLayer(0).setStrokeWidth(0.1)
        ranges.append(QgsRendererRange(lo, hi, symbol, f"{number_text(lo)} – {number_text(hi)}{unit}"))
    renderer = QgsGraduatedSymbolRenderer(field, ranges)
    renderer.setSourceColorRamp(ramp.clone())
    statement = f"equal intervals of {number_text(step)} percentage points"
    return renderer, statement


class GraduatedPostProcessor(KeptPostProcessor):
    """A graduated renderer on ``probability_mean`` (round equal intervals, stated in the layer's
    legend; a sequential palette), and every field's alias with its unit."""

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802
        if layer is None or not layer.isValid():
            return
        try:
            renderer, statement = graduated_renderer(layer)
        except ValueError as exc:  # no area has data: nothing to classify
            if feedback is not None:
                feedback.pushWarning(str(exc))
        else:
            layer.setRenderer(renderer)
            layer.setName(f"{layer.name()} (%; {statement})")
        from ..core.zonal import FIELD_UNITS

        set_aliases(layer, FIELD_UNITS)
        layer.triggerRepaint()


class RgbStretchPostProcessor(KeptPostProcessor):
    """Bands 1-2-3 as red-green-blue, stretched over 0–0.25 reflectance (land, not clouds)."""

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802
        if layer is None or not layer.isValid() or layer.bandCount() < 3:
            return
        from qgis.core import QgsContrastEnhancement, QgsMultiBandColorRenderer

        renderer = QgsMultiBandColorRenderer(layer.dataProvider(), 1, 2, 3)
        for band, setter in ((1, renderer.setRedContrastEnhancement), (2, renderer.setGreenContrastEnhancement),
                             (3, renderer.setBlueContrastEnhancement)):
            enhancement = QgsContrastEnhancement(layer.dataProvider().dataType(band))
            enhancement.setContrastEnhancementAlgorithm(
                QgsContrastEnhancement.ContrastEnhancementAlgorithm.StretchToMinimumMaximum)
            enhancement.setMinimumValue(0)
            enhancement.setMaximumValue(2500)
            setter(enhancement)
        layer.setRenderer(renderer)
        layer.triggerRepaint()
