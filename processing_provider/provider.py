"""The ``cloudprob`` Processing provider."""
from __future__ import annotations

import traceback
from pathlib import Path

from qgis.core import (
    Qgis, QgsMessageLog, QgsProcessingAlgorithm, QgsProcessingFeedback, QgsProcessingModelAlgorithm, QgsProcessingProvider,
)
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QIcon

from .signals import stops_on_signals

ICON = Path(__file__).resolve().parent.parent / "icons" / "cloudprob.svg"
MODELS = Path(__file__).resolve().parent / "models"

# (module, class) of every algorithm; a broken one is logged and the rest still load.
ALGORITHMS = [
    ("search_scenes", "SearchScenesAlgorithm"),
    ("screen_scenes", "ScreenScenesAlgorithm"),
    ("cloud_mask", "CloudMaskAlgorithm"),
    ("cloud_frequency", "CloudFrequencyAlgorithm"),
    ("smooth_probability", "SmoothProbabilityAlgorithm"),
    ("zonal_statistics", "ZonalStatisticsAlgorithm"),
    ("clear_composite", "ClearCompositeAlgorithm"),
]


class CloudProbabilityProvider(QgsProcessingProvider):
    """Provider id ``cloudprob``; ids of its algorithms are part of the public interface."""

    def __init__(self):
        super().__init__()
        # QGIS puts a provider in the registry only after loading it, and a model's outputs become
        # parameters only when its child algorithms resolve: load the models once registered.
        from qgis.core import QgsApplication

        QgsApplication.processingRegistry().providerAdded.connect(self._registered)

    def _registered(self, provider_id: str) -> None:
        if provider_id == self.id():
            self.refreshAlgorithms()

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
                QgsMessageLog.logMessage(f"Could not load {class_name}:\n{traceback.format_exc()}", "Cloud probability",
                                         Qgis.MessageLevel.Critical)
        from qgis.core import QgsApplication

        if QgsApplication.processingRegistry().providerById(self.id()) is not None:
            self._load_models()

    def unload(self) -> None:  # noqa: D102
        from qgis.core import QgsApplication

        # at qgis_process's exit on QGIS 3.44 the registry is already gone (None): nothing to disconnect
        registry = QgsApplication.processingRegistry()
        if registry is not None:
            try:
                registry.providerAdded.disconnect(self._registered)
            except (TypeError, RuntimeError):  # already disconnected, or its C++ object deleted
                pass
        super().unload()

    def _load_models(self) -> None:
        """The shipped graphical models (processing_provider/models/*.model3), as cloudprob:<name>."""
        for path in sorted(MODELS.glob("*.model3")):
            model = ShippedModel(path)
            if model.loaded:
                self.addAlgorithm(model)
            else:
                QgsMessageLog.logMessage(f"Could not read the model {path.name}", "Cloud probability",
                                         Qgis.MessageLevel.Critical)

class ShippedModel(QgsProcessingModelAlgorithm):
    """A shipped .model3 that runs in the background with progress and Cancel.

    QGIS 3.22 flags every model "no threading" (a TODO in QgsProcessingModelAlgorithm::flags),
    so a year's run froze the QGIS window; our children are all thread-safe, so the model drops
    the flag. It also shows a readable name instead of its id, sits in the same toolbox group as
    the algorithms of that group, asks for its inputs in the order of its diagram, and gives its
    help as plain text.
    """

    DISPLAY_NAMES = {"annualcloudprobability": "Annual cloud probability per small area (reference product)"}
    # QGIS takes a model's group name as its group id too, and the toolbox makes one group per id:
    # without this the model had a "Cloud probability" group of its own beside the algorithms'
    GROUP_IDS = {"Cloud probability": "probability", "Scenes": "scenes"}

    def __init__(self, path):
        super().__init__()
        self._path = Path(path)
        self.loaded = self.fromFile(str(self._path))
        if self.loaded:
            self._order_parameters()

    def _saved_help(self) -> dict:
        """{parameter: help} as the .model3 stores them: QGIS 3.22 writes each parameter's help into
        the file but does not read it back, so the model's inputs had no tooltip."""
        from qgis.core import QgsXmlUtils
        from qgis.PyQt.QtXml import QDomDocument

        document = QDomDocument()
        document.setContent(self._path.read_text(encoding="utf-8"))
        saved = QgsXmlUtils.readVariant(document.firstChildElement()) or {}
        return {name: (definition or {}).get("help") or ""
                for name, definition in (saved.get("parameterDefinitions") or {}).items()}

    def _order_parameters(self) -> None:
        """Inputs top to bottom as they stand in the model's diagram; then the outputs, the last
        step's first (the product before what it was made from).

        A .model3 keeps its parameters in a map, so QGIS 3.22 reads them back in alphabetical
        order: the dialog asked for the end date before the start date.
        """
        definitions = [d.clone() for d in self.parameterDefinitions()]
        saved_help = self._saved_help()
        for definition in definitions:
            if not definition.help() and saved_help.get(definition.name()):
                definition.setHelp(saved_help[definition.name()])

        def place(definition):
            name = definition.name()
            if not definition.isDestination():
                return (0, self.parameterComponent(name).position().y(), 0)
            child_id, _, output = name.partition(":")
            child = self.childAlgorithm(child_id)
            order = [d.name() for d in child.algorithm().destinationParameterDefinitions()] \
                if child.algorithm() is not None else []
            produced = child.modelOutput(output).childOutputName()
            return (1, -child.position().y(), order.index(produced) if produced in order else len(order))

        for definition in definitions:
            self.removeParameter(definition.name())
        for definition in sorted(definitions, key=place):
            self.addParameter(definition)

    def flags(self):
        return super().flags() & ~QgsProcessingAlgorithm.Flag.FlagNoThreading

    def displayName(self):  # noqa: N802
        return self.DISPLAY_NAMES.get(self.name(), super().displayName())

    def groupId(self):  # noqa: N802
        return self.GROUP_IDS.get(self.group(), super().groupId())

    def shortHelpString(self):  # noqa: N802
        """The model's description as plain text: QGIS wraps it in <html> for models, which the
        dialog renders but qgis_process help prints as it is."""
        return self.helpContent().get("ALG_DESC") or super().shortHelpString()

    def createInstance(self):  # noqa: N802
        return ShippedModel(self._path)

    @stops_on_signals
    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        # QGIS hands a model parameter left out of processing.run to the children as NULL, so
        # a child would use its own default (the frequency chain) instead of the model's (the
        # reference chain): fill in the model's defaults first
        from qgis.core import QgsProcessingParameterField

        filled = dict(parameters)
        for definition in self.parameterDefinitions():
            value = filled.get(definition.name())
            empty = value is None or (value == "" and isinstance(definition, QgsProcessingParameterField))
            if empty and definition.defaultValue() is not None and not definition.isDestination():
                filled[definition.name()] = definition.defaultValue()
        if self.name() == "annualcloudprobability":  # the area's warnings and the run's cost, first in the log
            from ..core.costs import ACQUISITIONS_PER_YEAR
            from .checks import annual_model_cost, check_cost
            from .common import check_extent

            check_extent(self, filled, "AOI", context, feedback)
            feedback.pushInfo(f"Before the search, every place is taken to be seen {ACQUISITIONS_PER_YEAR} times a "
                              "year; the frequency step says it again for the scenes found.")
            check_cost(self, filled, context, annual_model_cost(self, filled, context), feedback)
        steps = _ModelFeedback(feedback)
        try:
            results = super().processAlgorithm(filled, context, steps)
        finally:
            steps.detach()
        if steps.isCanceled():
            feedback.pushWarning(self._cancelled(results))
        return results

    def _cancelled(self, results) -> str:
        """What a cancelled run did: the steps that finished (their outputs kept), the one cancelled."""
        done = (results or {}).get("CHILD_RESULTS") or {}
        children = self.childAlgorithms()
        finished = [children[c].description() for c, r in done.items() if r and c in children]
        stopped = [children[c].description() for c, r in done.items() if not r and c in children]
        said = f"Cancelled after {len(finished)} of {len(children)} steps"
        if stopped:
            said += f", during '{stopped[0]}', which wrote nothing"
        if finished:
            said += f"; {', '.join(repr(d) for d in finished)} finished and kept {'its' if len(finished) == 1 else 'their'} outputs"
        return said + "."

    def required_modules(self) -> list:
        """The packages the model's steps need: the union of their algorithms' REQUIRES."""
        from qgis.core import QgsApplication

        registry = QgsApplication.processingRegistry()
        modules = []
        for child in self.childAlgorithms().values():
            algorithm = registry.algorithmById(child.algorithmId())
            modules += list(getattr(algorithm, "REQUIRES", ()))
        return list(dict.fromkeys(modules))

    def canExecute(self):  # noqa: N802
        """Says what is missing before any work starts (a model's own check looks at nothing)."""
        from .dependencies import can_execute

        return can_execute(self.displayName(), *self.required_modules())

    def checkParameterValues(self, parameters, context):  # noqa: N802
        """processing.run, qgis_process and the dialog call this before the first step: missing
        packages, and everything the steps would refuse (checks.check_annual_model), stop it here
        rather than after an hour of work."""
        from qgis.core import QgsProcessingException

        from .checks import check_annual_model, check_destinations
        from .dependencies import check_before_run

        modules = self.required_modules()
        if str(parameters.get("DASK_SCHEDULER") or "").strip():
            modules.append("distributed")
        ok, message = check_before_run(self.displayName(), modules)
        if not ok:
            return False, message
        ok, message = super().checkParameterValues(parameters, context)
        if not ok:
            return ok, message
        try:
            if self.name() == "annualcloudprobability":
                check_annual_model(self, parameters, context)
            else:
                check_destinations(self, parameters, context)
        except QgsProcessingException as exc:
            return False, str(exc)
        return True, ""


class _ModelFeedback(QgsProcessingFeedback):
    """The model run's feedback, passed through to the run's own, except QGIS 3.22's closing
    "Model processed OK" when the run was cancelled (it logged that next to "Execution failed")."""

    def __init__(self, target):
        super().__init__()
        self.target = target
        # direct: the model runs in a worker thread without an event loop, the run's feedback in the
        # main thread (a queued Cancel would never arrive, queued progress only at the end)
        target.canceled.connect(self.cancel, Qt.ConnectionType.DirectConnection)
        self.progressChanged.connect(target.setProgress, Qt.ConnectionType.DirectConnection)
        if target.isCanceled():
            self.cancel()

    def detach(self) -> None:
        try:
            self.target.canceled.disconnect(self.cancel)
        except (TypeError, RuntimeError):
            pass

    def cancel(self):  # noqa: D102 - a Cancel from the model's own steps reaches the run's too
        super().cancel()
        if not self.target.isCanceled():
            self.target.cancel()

    def setProgressText(self, text):  # noqa: N802, D102
        self.target.setProgressText(text)

    def pushInfo(self, info):  # noqa: N802, D102
        self.target.pushInfo(info)

    def pushDebugInfo(self, info):  # noqa: N802, D102
        if info.startswith("Model processed OK") and self.isCanceled():
            return
        self.target.pushDebugInfo(info)

    def pushWarning(self, warning):  # noqa: N802, D102
        self.target.pushWarning(warning)

    def reportError(self, error, fatalError=False):  # noqa: N802, N803, D102
        self.target.reportError(error, fatalError)

    def pushCommandInfo(self, info):  # noqa: N802, D102
        self.target.pushCommandInfo(info)

    def pushConsoleInfo(self, info):  # noqa: N802, D102
        self.target.pushConsoleInfo(info)
