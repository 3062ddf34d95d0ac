"""The algorithm dialogs and the toolbox as a user meets them (issue 16, "the dock", last bullet).

Each dialog is QGIS's own (processing.gui.AlgorithmDialog) at its default size, so what is
measured is what a user sees: a label wider than the parameter panel is cut off there (QGIS
3.22's labels do not wrap), and the panel then scrolls sideways.
"""
from __future__ import annotations

import re

import pytest

# The provider's algorithm ids, as /work/shared/DESIGN.md lists them ("Processing provider cloudprob").
ALGORITHMS = [
    "cloudprob:searchscenes", "cloudprob:screenscenes", "cloudprob:cloudmask", "cloudprob:cloudfrequency",
    "cloudprob:smoothprobability", "cloudprob:zonalstatistics", "cloudprob:clearcomposite",
    "cloudprob:annualcloudprobability",
]


@pytest.fixture()
def open_dialog(qgis_iface, qgis_processing, provider):
    """QGIS's algorithm dialog for an id, shown at its default size; closed afterwards."""
    from processing.gui.AlgorithmDialog import AlgorithmDialog
    from qgis.core import QgsApplication
    from qgis.gui import QgsBrowserGuiModel

    # pytest-qgis's iface has no browser model, which the dialog hands to its widgets: a real one
    browser = QgsBrowserGuiModel()
    qgis_iface.browserModel = lambda: browser
    opened = []

    def open_(alg_id):
        alg = QgsApplication.processingRegistry().createAlgorithmById(alg_id)
        dialog = AlgorithmDialog(alg, False, qgis_iface.mainWindow())
        dialog.show()
        QgsApplication.processEvents()
        opened.append(dialog)
        return alg, dialog

    yield open_
    for dialog in opened:
        dialog.close()
        dialog.deleteLater()


def _shown_texts(alg):
    """Each parameter's label as the dialog writes it, and its enum options."""
    from qgis.core import QgsProcessingParameterDefinition, QgsProcessingParameterEnum

    labels, options = {}, set()
    for param in alg.parameterDefinitions():
        if param.flags() & QgsProcessingParameterDefinition.Flag.FlagHidden:
            continue
        optional = param.flags() & QgsProcessingParameterDefinition.Flag.FlagOptional
        labels[param.name()] = param.description() + (" [optional]" if optional else "")
        if isinstance(param, QgsProcessingParameterEnum):
            options.update(param.options())
    return labels, options


@pytest.mark.parametrize("alg_id", ALGORITHMS)
def test_every_label_and_choice_fits_the_dialog(alg_id, open_dialog):
    from qgis.PyQt.QtWidgets import QCheckBox, QComboBox, QLabel, QScrollArea

    alg, dialog = open_dialog(alg_id)
    scroll = dialog.mainWidget().findChild(QScrollArea)
    width = scroll.viewport().width()
    labels, options = _shown_texts(alg)
    found, too_wide = set(), []
    # advanced parameters are built too (folded away until opened): they are measured as well
    for widget in scroll.widget().findChildren((QLabel, QCheckBox, QComboBox)):
        if isinstance(widget, QComboBox):
            items = {widget.itemText(i) for i in range(widget.count())}
            ours = bool(items) and items <= options
            text = " | ".join(sorted(items))
        else:
            text = widget.text()
            ours = text in labels.values() or text + " [optional]" in labels.values()
        if not ours:
            continue  # QGIS's own widgets (layer and CRS pickers, "Open output file…")
        if not isinstance(widget, QComboBox):
            found.update(name for name, label in labels.items() if text in (label, label.replace(" [optional]", "")))
        if widget.sizeHint().width() > width:
            too_wide.append(f"{type(widget).__name__} {widget.sizeHint().width()} px: {text!r}")
    assert not too_wide, f"wider than the {width} px parameter panel:\n" + "\n".join(too_wide)
    # every parameter's label was seen, so nothing escaped the measurement
    assert found == set(labels), set(labels) - found


MARKUP = re.compile(r"</?[a-zA-Z][^>]*>|\*\w[^*\n]*\w\*|\*\w\*")


@pytest.mark.parametrize("alg_id", ALGORITHMS)
def test_help_is_plain_text(alg_id, qgis_processing, provider):
    """The dialog shows the help as rich text and qgis_process prints it as it is: no markup
    (``*your*`` showed its asterisks, the model's help its ``<html>``)."""
    from qgis.core import QgsApplication

    alg = QgsApplication.processingRegistry().createAlgorithmById(alg_id)
    text = alg.shortHelpString()
    assert len(text) > 200, text  # the real help, not an empty override
    assert not MARKUP.search(text), MARKUP.search(text).group(0)
    for param in alg.parameterDefinitions():
        assert not MARKUP.search(param.description() + param.help()), param.name()


def test_dates_and_products_in_the_order_a_user_fills_them(qgis_processing, provider):
    from qgis.core import QgsApplication

    for alg_id in ALGORITHMS:
        alg = QgsApplication.processingRegistry().createAlgorithmById(alg_id)
        names = [p.name() for p in alg.parameterDefinitions()]
        if "START_DATE" in names:
            assert names.index("START_DATE") < names.index("END_DATE"), (alg_id, names)
    model = QgsApplication.processingRegistry().createAlgorithmById("cloudprob:annualcloudprobability")
    params = model.parameterDefinitions()
    inputs = [p.name() for p in params if not p.isDestination()]
    outputs = [p.name() for p in params if p.isDestination()]
    # where the scenes come from, then the area and the period, then the small areas
    assert inputs[:7] == ["STAC_URL", "COLLECTION", "AOI", "START_DATE", "END_DATE", "ZONES", "ZONE_ID_FIELD"]
    assert [p.name() for p in params] == inputs + outputs
    assert outputs[:2] == ["zonal:SMALL_AREAS", "zonal:SMALL_AREAS_CSV"]  # the product first


def test_toolbox_groups_have_distinct_names(qgis_processing, provider):
    """As the Processing toolbox builds them: one group per group id, under the provider."""
    from qgis.core import QgsApplication
    from qgis.gui import QgsProcessingToolboxModel, QgsProcessingToolboxModelNode

    model = QgsProcessingToolboxModel(None, QgsApplication.processingRegistry())
    roots = [model.index(row, 0) for row in range(model.rowCount())]
    [root] = [i for i in roots if model.providerForIndex(i) and model.providerForIndex(i).id() == "cloudprob"]
    groups = []
    for row in range(model.rowCount(root)):
        index = model.index(row, 0, root)
        if model.index2node(index).nodeType() == QgsProcessingToolboxModelNode.NodeType.NodeGroup:
            groups.append(model.data(index))
    assert sorted(groups) == ["Cloud probability", "Scenes"], groups
    annual = QgsApplication.processingRegistry().algorithmById("cloudprob:annualcloudprobability")
    assert annual.displayName() != annual.name()


UNITS = re.compile(r"metres|pixels|percent|%|count|\bdays?\b|YYYY-MM-DD|0–1|0 to 1|\d+ × \d+")


@pytest.mark.parametrize("alg_id", ALGORITHMS)
def test_every_parameter_says_what_it_is_its_unit_and_default(alg_id, qgis_processing, provider):
    """Issue 23: many of the model's and searchscenes' parameters had no help (the dialog's
    tooltip, and qgis_process help). Every input now says what it is and its default (or that it
    has none); every number its unit; every output what it holds."""
    from qgis.core import QgsApplication, QgsProcessingParameterNumber

    alg = QgsApplication.processingRegistry().createAlgorithmById(alg_id)
    missing = []
    for param in alg.parameterDefinitions():
        text = param.help()
        if not text:
            missing.append(f"{param.name()}: no help")
        elif param.isDestination():
            continue
        elif "default" not in text.lower():
            missing.append(f"{param.name()}: no default in {text!r}")
        elif isinstance(param, QgsProcessingParameterNumber) and not UNITS.search(param.description() + text):
            missing.append(f"{param.name()}: no unit in {text!r}")
    assert not missing, "\n".join(missing)


def test_the_shipped_model_is_valid_and_its_defaults_are_enough(qgis_processing, provider):
    """Issue 23: TARGET_CRS's default was ignored outside the dialog: qgis_process 3.22 takes a
    missing parameter as given only when QGIS's own check accepts no value, which a mandatory CRS
    never does, whatever its default ("mandatory parameters were not specified"). Every child is
    valid in QGIS's own sense (no red child in the modeler), and every parameter with a default
    passes the check qgis_process makes on a parameter left out."""
    from qgis.core import QgsApplication, QgsProcessingContext, QgsProcessingParameterDefinition

    model = QgsApplication.processingRegistry().createAlgorithmById("cloudprob:annualcloudprobability")
    for child_id in model.childAlgorithms():
        assert model.validateChildAlgorithm(child_id) == (True, []), child_id
    context = QgsProcessingContext()
    refused = [p.name() for p in model.parameterDefinitions()
               if p.defaultValue() is not None and not p.isDestination()
               and not p.flags() & QgsProcessingParameterDefinition.Flag.FlagOptional
               and not p.checkValueIsAcceptable(None, context)]
    assert refused == []  # tests/test_readme_commands.py runs the model without TARGET_CRS through qgis_process


def test_an_extent_the_dialog_put_in_order_gets_the_right_suggestion(open_dialog, sample_servers, tmp_path):
    """Issue 23: the README's area typed in bbox order into the dialog reaches the algorithm with
    each pair put in order by QGIS's widget (172000,533000,… : 361 × 361 km); the warning offered
    the wrong box. It now offers both boxes the numbers can be, the one meant among them."""
    from qgis import processing
    from qgis.core import QgsProcessingContext, QgsProcessingException, QgsProcessingFeedback

    alg, dialog = open_dialog("cloudprob:searchscenes")
    dialog.mainWidget().wrappers["AOI"].setParameterValue("533000,172000,545000,184000 [EPSG:27700]",
                                                          QgsProcessingContext())
    params = dialog.createProcessingParameters()
    assert [float(v) for v in params["AOI"].split(" ")[0].split(",")] == [172000, 533000, 184000, 545000]  # QGIS's doing

    class Keep(QgsProcessingFeedback):
        warnings = []

        def pushWarning(self, warning):  # noqa: N802
            self.warnings.append(warning)
            super().pushWarning(warning)

    feedback = Keep()
    params.update(STAC_URL=sample_servers.stac.url, START_DATE="2024-01-01", END_DATE="2024-01-31",
                  OUTPUT=str(tmp_path / "scenes.gpkg"))
    # the sample archive lies around Greenwich (x 538000): the box as read finds none of its scenes
    with pytest.raises(QgsProcessingException) as caught:
        processing.run("cloudprob:searchscenes", params, feedback=feedback)
    [warning] = [w for w in feedback.warnings if "bbox order" in w]
    assert "(361 × 361 km)" in warning and "If you meant a box of 12 × 12 km" in warning
    assert "'533000,545000,172000,184000 [EPSG:27700]' (x 533000…545000, y 172000…184000)" in warning
    assert str(caught.value).startswith("No scenes of 'sentinel-2-c1-l2a' found")
    assert "the area you meant is '172000,184000,533000,545000 [EPSG:27700]' or '533000,545000,172000,184000 " \
           "[EPSG:27700]'." in str(caught.value)
    params["AOI"] = "533000,545000,172000,184000 [EPSG:27700]"  # the box offered, as meant: Greenwich's scenes
    processing.run("cloudprob:searchscenes", params)
    assert (tmp_path / "scenes.gpkg").exists()


@pytest.fixture()
def model_params(sample_servers, sample_archive, tmp_path):
    """The shipped model over the sample archive, every output a temporary file."""
    import json

    from qgis.core import QgsApplication

    x0, y0, x1, y1 = json.loads((sample_archive / "archive.json").read_text())["aoi_27700"]
    params = {"STAC_URL": sample_servers.stac.url, "AOI": f"{x0},{x1},{y0},{y1} [EPSG:27700]",
              "START_DATE": "2024-01-01", "END_DATE": "2024-12-31",
              "ZONES": str(sample_archive / "zones" / "small_areas.gpkg"), "ZONE_ID_FIELD": "code"}
    model = QgsApplication.processingRegistry().algorithmById("cloudprob:annualcloudprobability")
    params.update({d.name(): "TEMPORARY_OUTPUT" for d in model.destinationParameterDefinitions()})
    params["zonal:SMALL_AREAS_CSV"] = str(tmp_path / "areas.csv")
    return params


def test_every_output_legend_says_what_it_shows(qgis_iface, provider, model_params):
    """Issue 23: two raster legends read "Band 1 (Gray)" (the smoothing's outputs, their band
    undescribed). Every raster the model loads has its band described in the file and its legend
    headed by what it shows, with its unit; none by a band's name."""
    import rasterio
    from qgis import processing
    from qgis.core import QgsLayerTreeModel, QgsProject, QgsRasterLayer
    from qgis.PyQt.QtCore import Qt

    QgsProject.instance().removeAllMapLayers()
    processing.runAndLoadResults("cloudprob:annualcloudprobability", model_params)
    root = QgsProject.instance().layerTreeRoot()
    tree = QgsLayerTreeModel(root)
    rasters = [layer for layer in QgsProject.instance().mapLayers().values() if isinstance(layer, QgsRasterLayer)]
    assert len(rasters) == 6  # probability, valid, cloudy, spread, neighbourhood, adjusted
    for layer in rasters:
        heading = tree.layerLegendNodes(root.findLayer(layer.id()))[0].data(Qt.ItemDataRole.DisplayRole)
        assert heading == layer.name() and not heading.startswith("Band "), heading
        assert re.search(r"\((%|count)\)$", heading), heading
        with rasterio.open(layer.source()) as ds:
            assert ds.descriptions[0] and ds.tags(1).get("units") or ds.tags().get("units"), layer.source()
    QgsProject.instance().removeAllMapLayers()


def test_a_cancelled_model_does_not_say_it_processed_ok(provider, model_params):
    """Issue 23: after a Cancel QGIS 3.22 logged "Model processed OK" next to "Execution failed".
    Cancelled while its second step runs, the model says how far it got, and nothing else."""
    from qgis import processing
    from qgis.core import QgsProcessingFeedback

    class CancelAtTheGrid(QgsProcessingFeedback):
        lines = []

        def _keep(self, text):
            self.lines.append(text)
            if text.startswith("Grid "):  # the frequency step has started
                self.cancel()

        def pushInfo(self, info):  # noqa: N802
            self._keep(info)
            super().pushInfo(info)

        def pushDebugInfo(self, info):  # noqa: N802
            self._keep(info)
            super().pushDebugInfo(info)

        def pushWarning(self, warning):  # noqa: N802
            self._keep(warning)
            super().pushWarning(warning)

    feedback = CancelAtTheGrid()
    processing.run("cloudprob:annualcloudprobability", model_params, feedback=feedback)
    assert feedback.isCanceled()
    assert not any("Model processed OK" in line for line in feedback.lines), feedback.lines[-5:]
    assert ("Cancelled after 1 of 4 steps, during 'Per-pixel cloud probability', which wrote nothing; 'Search "
            "Sentinel-2 scenes' finished and kept its outputs.") in feedback.lines
