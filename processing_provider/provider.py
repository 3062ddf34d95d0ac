"""The ``cloudprob`` Processing provider."""
from __future__ import annotations

import traceback
from pathlib import Path

from qgis.core import Qgis, QgsMessageLog, QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

ICON = Path(__file__).resolve().parent.parent / "icons" / "cloudprob.svg"

# (module, class) of every algorithm; a broken one is logged and the rest still load.
ALGORITHMS = [
    ("search_scenes", "SearchScenesAlgorithm"),
    ("screen_scenes", "ScreenScenesAlgorithm"),
    ("cloud_mask", "CloudMaskAlgorithm"),
    ("cloud_frequency", "CloudFrequencyAlgorithm"),
    ("smooth_probability", "SmoothProbabilityAlgorithm"),
    ("zonal_statistics", "ZonalStatisticsAlgorithm"),
]


class CloudProbabilityProvider(QgsProcessingProvider):
    """Provider id ``cloudprob``; ids of its algorithms are part of the public interface."""

    def id(self) -> str:  # noqa: D102
        return "cloudprob"

    def name(self) -> str:  # noqa: D102
        return "Cloud probability (Sentinel-2)"

    def longName(self) -> str:  # noqa: N802, D102
        return "Cloud probability statistics from Sentinel-2 L2A archives"

    def icon(self) -> QIcon:  # noqa: D102
        return QIcon(str(ICON))

    def svgIconPath(self) -> str:  # noqa: N802, D102
        return str(ICON)

    def loadAlgorithms(self) -> None:  # noqa: N802
        """Add every algorithm that imports; log the ones that do not."""
        import importlib

        for module_name, class_name in ALGORITHMS:
            try:
                module = importlib.import_module(f"{__package__}.{module_name}")
                self.addAlgorithm(getattr(module, class_name)())
            except Exception:  # one broken algorithm must not hide the others
                QgsMessageLog.logMessage(
                    f"Could not load {class_name}:\n{traceback.format_exc()}", "Cloud probability", Qgis.Critical
                )
