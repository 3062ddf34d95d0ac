"""What every cloudprob algorithm has in common: id, names, group, translation, instances."""
from __future__ import annotations

from qgis.core import QgsProcessingAlgorithm
from qgis.PyQt.QtCore import QCoreApplication

from .params import with_help  # noqa: F401 (the algorithms take it from here)


class CloudProbAlgorithm(QgsProcessingAlgorithm):
    """Subclasses set NAME (the id after ``cloudprob:``), DISPLAY_NAME, GROUP, GROUP_ID and REQUIRES
    (the import names of the lazily imported packages every run needs, see dependencies.PACKAGES)."""

    NAME = ""
    DISPLAY_NAME = ""
    GROUP = ""
    GROUP_ID = ""
    REQUIRES: tuple = ()

    def tr(self, text: str) -> str:
        return QCoreApplication.translate(type(self).__name__, text)

    def createInstance(self):  # noqa: N802
        return type(self)()

    def name(self) -> str:
        return self.NAME

    def displayName(self) -> str:  # noqa: N802
        return self.tr(self.DISPLAY_NAME)

    def group(self) -> str:
        return self.tr(self.GROUP)

    def groupId(self) -> str:  # noqa: N802
        return self.GROUP_ID

    def required_modules(self, parameters=None, context=None) -> list:
        """REQUIRES, plus ``distributed`` when a Dask scheduler is given and ``s2cloudless`` for its mask."""
        modules = list(self.REQUIRES)
        if parameters is None:
            return modules
        from .common import DASK_SCHEDULER, MASK_SOURCE, MASK_SOURCES
        from ..core.masks import PRESETS

        if self.parameterDefinition(DASK_SCHEDULER) is not None \
                and (self.parameterAsString(parameters, DASK_SCHEDULER, context) or "").strip():
            modules.append("distributed")
        if self.parameterDefinition(MASK_SOURCE) is not None:
            index = self.parameterAsEnum(parameters, MASK_SOURCE, context)
            if 0 <= index < len(MASK_SOURCES) and PRESETS[MASK_SOURCES[index]].source == "s2cloudless":
                modules.append("s2cloudless")
        return modules

    def canExecute(self):  # noqa: N802
        """False with one sentence when a package every run needs is missing (the toolbox shows it)."""
        from .dependencies import can_execute

        return can_execute(self.displayName(), *self.REQUIRES)

    def checkParameterValues(self, parameters, context):  # noqa: N802
        """Before any work (dialog, processing.run, qgis_process): the packages this run needs
        import, QGIS's own checks pass, every output can be written where it is asked for, and
        the algorithm's own :meth:`check_inputs` finds nothing wrong."""
        from qgis.core import QgsProcessingException

        from .checks import check_destinations
        from .dependencies import check_before_run

        ok, message = check_before_run(self.displayName(), self.required_modules(parameters, context))
        if not ok:
            return False, message
        ok, message = super().checkParameterValues(parameters, context)
        if not ok:
            return ok, message
        try:
            check_destinations(self, parameters, context)
            self.check_inputs(parameters, context)
        except QgsProcessingException as exc:
            return False, str(exc)
        return True, ""

    def check_inputs(self, parameters, context) -> None:
        """Raise QgsProcessingException for an input that cannot work, before any work starts.
        Algorithms override it; it must read, never write, and take seconds at most."""
