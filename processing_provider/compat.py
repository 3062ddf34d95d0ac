"""What differs between QGIS 3.22 (Qt5) and QGIS 4 (Qt6) and has no single spelling for both.

Everything else is written once: Qt names through ``qgis.PyQt`` and enum members through their
enum type (``Qt.ItemDataRole.UserRole``, ``QgsProcessing.SourceType.TypeVectorPolygon``), which
QGIS 3.22's PyQt5 and QGIS 4's PyQt6 both accept (tests/test_qt6_ready.py).
"""
from __future__ import annotations

from qgis.core import Qgis
from qgis.PyQt.QtCore import QMetaType

# Field types by the plugin's own names. Qt6 has only QMetaType.Type, and QgsField takes it from
# QGIS 3.38 on; QGIS 3.22-3.36 take only a QVariant.Type, whose numbers are QMetaType's.
_FIELD_TYPES = {
    "string": QMetaType.Type.QString,
    "int": QMetaType.Type.Int,
    "double": QMetaType.Type.Double,
    "datetime": QMetaType.Type.QDateTime,
}
QGSFIELD_TAKES_QMETATYPE = Qgis.QGIS_VERSION_INT >= 33800


def field_type(kind: str):
    """The type to give ``QgsField`` for ``kind`` (string, int, double, datetime) in this QGIS."""
    meta = _FIELD_TYPES[kind]
    if QGSFIELD_TAKES_QMETATYPE:
        return meta
    from qgis.PyQt.QtCore import QVariant

    return QVariant.Type(int(meta))  # noqa: QGS402 — QGIS < 3.38 only (Qt5, where QVariant.Type exists)
