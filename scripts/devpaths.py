"""Make a checkout importable as the installed plugin package ``cloud_probability``.

The repository root is the plugin folder, whatever the clone is called; tests, the demo and
the benchmarks import it through a link .build/plugins/cloud_probability (the same folder
scripts/qgis_process puts on QGIS_PLUGINPATH).
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / ".build"


def ensure_plugin_importable(*extra: Path) -> None:
    """Link the checkout as .build/plugins/cloud_probability and put it (and ``extra``) on sys.path."""
    plugins = BUILD / "plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    link = plugins / "cloud_probability"
    if not link.exists():
        link.symlink_to(ROOT, target_is_directory=True)
    for path in (str(plugins), str(ROOT / "scripts"), *map(str, extra)):
        if path not in sys.path:
            sys.path.insert(0, path)
