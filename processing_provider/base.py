"""What every cloudprob algorithm has in common: id, names, group, translation, instances."""
from __future__ import annotations

from qgis.core import QgsProcessingAlgorithm
from qgis.PyQt.QtCore import QCoreApplication


def with_help(param, text: str):
    """``param`` with ``text`` as its help (the dialog's tooltip on the parameter).

    Labels stay short enough to be read whole in the parameter panel (QGIS does not wrap them);
    what a label used to say in brackets goes here and into the algorithm's help.
    """
    param.setHelp(text)
    return param


class CloudProbAlgorithm(QgsProcessingAlgorithm):
    """Subclasses set NAME (the id after ``cloudprob:``), DISPLAY_NAME, GROUP and GROUP_ID."""

    NAME = ""
    DISPLAY_NAME = ""
    GROUP = ""
    GROUP_ID = ""

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
