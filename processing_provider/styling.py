"""Layer post-processors that style outputs after an algorithm (main thread, never in core)."""
from __future__ import annotations

from pathlib import Path

from qgis.core import QgsMapLayer, QgsProcessingContext, QgsProcessingLayerPostProcessorInterface

STYLES = Path(__file__).resolve().parent.parent / "ui" / "styles"


class StylePostProcessor(QgsProcessingLayerPostProcessorInterface):
    """Loads a .qml style from ``ui/styles`` onto the output layer."""

    # Processing keeps only a raw pointer to a post-processor: hold every instance here so none
    # is garbage-collected before it runs (it runs on the main thread after the algorithm).
    _alive: dict[str, "StylePostProcessor"] = {}

    def __init__(self, qml: str):
        super().__init__()
        self.qml = qml

    def postProcessLayer(self, layer: QgsMapLayer, context: QgsProcessingContext, feedback) -> None:  # noqa: N802
        path = STYLES / self.qml
        if layer is None or not layer.isValid():
            return
        message, ok = layer.loadNamedStyle(str(path))
        if not ok and feedback is not None:
            feedback.pushWarning(f"Could not apply the style {path.name}: {message}")
        layer.triggerRepaint()

    @classmethod
    def attach(cls, context: QgsProcessingContext, layer_id: str, qml: str, name: str | None = None) -> None:
        """Style (and optionally rename) the output ``layer_id`` when QGIS loads it."""
        if not context.willLoadLayerOnCompletion(layer_id):
            return
        details = context.layerToLoadOnCompletionDetails(layer_id)
        if name:
            details.name = name
        processor = cls(qml)
        cls._alive[f"{layer_id}:{qml}"] = processor
        details.setPostProcessor(processor)
