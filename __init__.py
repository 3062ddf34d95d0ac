"""Cloud Probability — a QGIS plugin (folder name ``cloud_probability``).

Nothing QGIS-specific is imported at module level, so ``core`` stays importable from plain
Python through this package.
"""


def classFactory(iface):  # noqa: N802 (QGIS's name)
    """Called by QGIS to create the plugin."""
    from .plugin import CloudProbabilityPlugin

    return CloudProbabilityPlugin(iface)
