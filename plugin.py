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
        """Desktop start-up: the provider is all there is so far."""
        self.initProcessing()

    def unload(self):
        """Remove what initProcessing added."""
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
