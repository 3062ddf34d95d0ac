"""The plugin loads the way QGIS loads it, and says clearly what is missing."""
from __future__ import annotations

import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_metadata():
    meta = configparser.ConfigParser()
    meta.read(ROOT / "metadata.txt")
    general = meta["general"]
    assert general["name"] == "Cloud Probability"
    assert general["qgisMinimumVersion"] == "3.22"
    assert general["hasProcessingProvider"] == "yes"
    assert general["license"] == "GPL-2.0-or-later"
    for key in ("version", "about", "description", "tracker", "repository", "author", "email"):
        assert general.get(key), key
    assert (ROOT / general["icon"]).is_file()


def test_class_factory_registers_and_unloads_the_provider(qgis_iface, qgis_processing):
    from qgis.core import QgsApplication

    import cloud_probability

    registry = QgsApplication.processingRegistry()
    had = registry.providerById("cloudprob")
    if had is not None:  # the session fixture's provider; the plugin must add its own
        registry.removeProvider(had)
    plugin = cloud_probability.classFactory(qgis_iface)
    plugin.initGui()
    try:
        provider = registry.providerById("cloudprob")
        assert provider is not None and provider.name() == "Cloud probability (Sentinel-2)"
        assert sorted(a.id() for a in provider.algorithms()) == [
            "cloudprob:annualcloudprobability", "cloudprob:clearcomposite", "cloudprob:cloudfrequency", "cloudprob:cloudmask",
            "cloudprob:screenscenes", "cloudprob:searchscenes", "cloudprob:smoothprobability",
            "cloudprob:zonalstatistics"]
        assert not provider.icon().isNull()
        from qgis.core import QgsProcessingAlgorithm

        model = registry.algorithmById("cloudprob:annualcloudprobability")
        assert model.displayName() == "Annual cloud probability per small area (reference product)"
        # runs in the background like every other algorithm (QGIS 3.22 flags models "no threading")
        for alg in provider.algorithms():
            assert not alg.flags() & QgsProcessingAlgorithm.Flag.FlagNoThreading, alg.id()
            assert not alg.create().flags() & QgsProcessingAlgorithm.Flag.FlagNoThreading, alg.id()
    finally:
        plugin.unload()
    assert registry.providerById("cloudprob") is None


def test_missing_package_is_named_with_the_install_command():
    from cloud_probability.processing_provider.dependencies import can_execute

    assert can_execute("This algorithm", "json") == (True, "")
    ok, message = can_execute("This algorithm", "exactextract", "no_such_module_for_cloudprob")
    assert not ok
    assert message.startswith("This algorithm needs the Python package no_such_module_for_cloudprob,")
    assert "exactextract" not in message  # installed here, so not named
    assert "Plugins › Cloud probability › Install Python packages…" in message
    assert "-m pip install --user" in message and '"no_such_module_for_cloudprob"' in message
