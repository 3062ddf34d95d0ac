"""Which optional Python packages an algorithm needs, and how to tell the user to get them."""
from __future__ import annotations

import importlib.util

# import name -> (pip name, pinned version known to work with Debian's QGIS 3.22 stack)
PACKAGES = {
    "pystac_client": ("pystac-client", "0.9.1"),
    "exactextract": ("exactextract", "0.3.0"),
    "s2cloudless": ("s2cloudless", "1.7.3"),
}


def missing(*modules: str) -> list[str]:
    """The import names among ``modules`` that cannot be imported in QGIS's Python."""
    return [m for m in modules if importlib.util.find_spec(m) is None]


def install_hint(modules: list[str]) -> str:
    """A sentence naming the missing packages and the command that installs them."""
    pins = " ".join(f"{PACKAGES[m][0]}=={PACKAGES[m][1]}" if m in PACKAGES else m for m in modules)
    names = ", ".join(PACKAGES.get(m, (m,))[0] for m in modules)
    return (
        f"This algorithm needs the Python package(s) {names}, which QGIS's Python cannot import. "
        f"Install them into QGIS's Python and restart QGIS: on Debian/Ubuntu "
        f"'/usr/bin/python3 -m pip install --user --break-system-packages \"numpy==$(/usr/bin/python3 -c "
        f"'import numpy; print(numpy.__version__)')\" {pins}' (pinning numpy keeps QGIS's own numpy); "
        f"on Windows, from the OSGeo4W Shell: 'python -m pip install {pins}'."
    )


def can_execute(*modules: str) -> tuple[bool, str]:
    """``(True, "")`` or ``(False, hint)`` for ``QgsProcessingAlgorithm.canExecute``."""
    absent = missing(*modules)
    return (not absent, install_hint(absent) if absent else "")
