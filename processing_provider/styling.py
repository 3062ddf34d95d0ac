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
        layer.triggerRepaint()


def set_aliases(layer, aliases: dict) -> None:
    """Each field's alias (its meaning and unit) where the layer has that field."""
    for name, alias in aliases.items():
        index = layer.fields().indexOf(name)
        if index >= 0:
            layer.setFieldAlias(index, alias)


class GraduatedPostProcessor(KeptPostProcessor):
    """A graduated renderer (7 quantile classes, legend in percent) on ``probability_mean``, a
    sequential palette, and every field's alias with its unit."""

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802
        if layer is None or not layer.isValid():
            return
        from qgis.core import QgsClassificationQuantile, QgsGraduatedSymbolRenderer, QgsStyle

        renderer = QgsGraduatedSymbolRenderer("probability_mean")
        renderer.setClassificationMethod(QgsClassificationQuantile())
        renderer.updateClasses(layer, 7)
        ramp = QgsStyle.defaultStyle().colorRamp("Blues")
        if ramp is not None:  # sequential: more cloud, darker
            renderer.updateColorRamp(ramp)
        for index, item in enumerate(renderer.ranges()):
            renderer.updateRangeLabel(index, f"{item.lowerValue():.1f} – {item.upperValue():.1f} %")
        layer.setRenderer(renderer)
        from ..core.zonal import FIELD_UNITS

        for name, alias in FIELD_UNITS.items():
            index = layer.fields().indexOf(name)
            if index >= 0:
                layer.setFieldAlias(index, alias)
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
            enhancement.setContrastEnhancementAlgorithm(QgsContrastEnhancement.StretchToMinimumMaximum)
            enhancement.setMinimumValue(0)
            enhancement.setMaximumValue(2500)
            setter(enhancement)
        layer.setRenderer(renderer)
        layer.triggerRepaint()
