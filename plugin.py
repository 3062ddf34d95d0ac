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
        from .processing_provider.dependencies import activate
        from .processing_provider.provider import CloudProbabilityProvider

        try:  # packages installed from the plugin's menu (the profile's folder) become importable
            activate()
        except Exception:  # never a reason for the provider not to load
            from qgis.core import Qgis, QgsMessageLog
            import traceback

            QgsMessageLog.logMessage(traceback.format_exc(), "Cloud probability", Qgis.MessageLevel.Warning)
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
        self._init_packages()

    def _init_packages(self):
        """Plugins › Cloud probability › Install Python packages…, and a warning (never a traceback)
        on the message bar when a package the plugin needs is missing."""
        from qgis.PyQt.QtWidgets import QAction

        from .processing_provider import dependencies as deps

        self.install_action = QAction(deps.INSTALL_ACTION, self.iface.mainWindow())
        self.install_action.triggered.connect(self.show_install_dialog)
        self.iface.addPluginToMenu(deps.MENU, self.install_action)
        self.packages_message = None
        absent = deps.startup_missing()
        if absent:
            from .ui.install_dialog import offer_install

            self.packages_message = offer_install(
                self.iface.messageBar(), deps.missing_sentence("The plugin", absent, headless=False), absent,
                self.iface.mainWindow(), self._packages_installed)

    def show_install_dialog(self):
        """The dialog of the Plugins menu: every pip package, the missing ones ticked."""
        from .ui.install_dialog import InstallDialog

        self.install_dialog = InstallDialog(parent=self.iface.mainWindow())
        self.install_dialog.installed.connect(self._packages_installed)
        self.install_dialog.show()

    def _packages_installed(self, modules):
        """After an install: the start-up warning goes once nothing it named is missing."""
        from .processing_provider.dependencies import startup_missing

        if not startup_missing():
            self._clear_packages_message()

    def _clear_packages_message(self):
        if getattr(self, "packages_message", None) is not None:
            try:
                self.iface.messageBar().popWidget(self.packages_message)
            except RuntimeError:  # the user closed it: Qt already deleted it
                pass
            self.packages_message = None

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
        if getattr(self, "install_action", None) is not None:
            from .processing_provider.dependencies import MENU

            self.iface.removePluginMenu(MENU, self.install_action)
            self.install_action = None
        self._clear_packages_message()
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
