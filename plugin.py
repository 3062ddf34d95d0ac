"""The plugin object QGIS creates: registers the Processing provider."""
from __future__ import annotations

from qgis.core import QgsApplication


class CloudProbabilityPlugin:
    """Registers the ``cloudprob`` Processing provider (desktop and ``qgis_process``)."""

    def __init__(self, iface):
        self.iface = iface
        self.provider = None

    def initProcessing(self):  # noqa: N802 (QGIS's name)
        """Called by QGIS desktop and by qgis_process (which only runs this)."""
        from .processing_provider.provider import CloudProbabilityProvider

        if self.provider is None:
            self.provider = CloudProbabilityProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):  # noqa: N802
        """Desktop start-up: the provider, and the "Cloud probability" dock with its toolbar button."""
        from pathlib import Path

        from qgis.PyQt.QtCore import Qt
        from qgis.PyQt.QtGui import QIcon
        from qgis.PyQt.QtWidgets import QAction

        from .ui.dock import CloudProbabilityDock

        self.initProcessing()
        self.dock = CloudProbabilityDock(self.iface, self.iface.mainWindow())
        self.iface.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.dock)
        self.dock.hide()
        icon = QIcon(str(Path(__file__).resolve().parent / "icons" / "cloudprob.svg"))
        self.action = QAction(icon, "Cloud probability", self.iface.mainWindow())
        self.action.setCheckable(True)
        self.action.toggled.connect(self.dock.setUserVisible)
        self.dock.visibilityChanged.connect(self.action.setChecked)
        self.iface.addToolBarIcon(self.action)
        self.iface.addPluginToRasterMenu("Cloud probability", self.action)

    def unload(self):
        """Remove what initProcessing and initGui added."""
        if getattr(self, "dock", None) is not None:
            if self.dock.task is not None:
                self.dock.cancel()
            self.iface.removeDockWidget(self.dock)
            self.dock.deleteLater()
            self.dock = None
        if getattr(self, "action", None) is not None:
            self.iface.removeToolBarIcon(self.action)
            self.iface.removePluginRasterMenu("Cloud probability", self.action)
            self.action = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
