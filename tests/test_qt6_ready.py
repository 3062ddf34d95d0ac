"""One code base for QGIS 3.22 (Qt5) and QGIS 4 (Qt6): what can be checked on this machine.

Only QGIS 3.22 runs here, so these tests check what QGIS 4 is known to need instead of running it:

- flake8-qgis (its QGS1xx rules for every QGIS, its QGS4xx rules for Qt6) over the repository's
  Python is clean, and the same configuration does flag each kind of mistake it is there for;
- every enum member of a Qt or QGIS class is reached through its enum type
  (``Qt.AlignmentFlag.AlignLeft``, not ``Qt.AlignLeft``): PyQt6 has only that form. This goes
  further than flake8-qgis's QGS403, which knows a fixed list of Qt enums: here every
  ``Class.Member`` in the code is looked up in this QGIS, and a member of an enum is reported
  unless the enum's own name stands between;
- field types go through the one shim (QGIS 3.22 wants a ``QVariant.Type``, Qt6 has only
  ``QMetaType.Type``);
- no compiled Qt resources (PyQt6 has no pyrcc): icons are loaded from files that exist, and
  resources.qrc, their manifest, lists every one of them.
"""
from __future__ import annotations

import ast
import fnmatch
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SKIP_DIRS = {".venv", ".build", ".git", "demo_out", "bench_out", "dist", "__pycache__", ".qgis-settings"}


def own_files(pattern: str) -> list[Path]:
    """The repository's own files matching ``pattern`` (not the venv, caches or build outputs).

    The skipped folders are never entered: .build/ holds whole Debian trees (make test-matrix)."""
    found = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS]
        found += [Path(folder, f) for f in files if fnmatch.fnmatch(f, pattern)]
    return sorted(found)


def python_files() -> list[Path]:
    """The repository's own Python files (what flake8 sees with the project's configuration)."""
    return own_files("*.py")


def flake8(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flake8", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_flake8_qgis_is_installed_and_configured():
    version = flake8("--version")
    assert version.returncode == 0, version.stderr
    assert "flake8-qgis" in version.stdout, version.stdout
    config = (ROOT / ".flake8").read_text()
    assert "QGS1" in config and "QGS4" in config


def test_flake8_qgis_finds_nothing_in_the_repository():
    done = flake8()
    assert done.returncode == 0 and not done.stdout.strip(), f"flake8-qgis findings:\n{done.stdout}{done.stderr}"


def test_the_same_configuration_flags_what_qgis_4_cannot_run(tmp_path):
    """The gate above can fail: each line below breaks on Qt6 or against QGIS's rules."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from PyQt5.QtCore import QVariant\n"          # QGS103: PyQt imported directly
        "from qgis.PyQt.QtCore import Qt\n"
        "import processing\n"                          # QGS111
        "from .resources_rc import qInitResources\n"   # QGS408: compiled resources
        "kind = QVariant.String\n"                     # QGS402: no QVariant.Type in Qt6
        "button = Qt.MidButton\n"                      # QGS403: enum removed in Qt6
        "dialog.exec_()\n"                             # QGS107
    )
    done = flake8("--config", str(ROOT / ".flake8"), str(bad), cwd=tmp_path)
    codes = {line.split()[1] for line in done.stdout.splitlines() if line.strip()}
    assert {"QGS103", "QGS111", "QGS408", "QGS402", "QGS403", "QGS107"} <= codes, done.stdout


def _is_enum_member(value) -> bool:
    """A member of a sip-wrapped C++ enum (PyQt5) or of a Python enum (PyQt6, QGIS ≥ 3.30)."""
    import enum

    metaclass = type(type(value))  # sip.enumtype for PyQt5's enums (sip does not export the name)
    return isinstance(value, enum.Enum) or (metaclass.__module__, metaclass.__name__) == ("sip", "enumtype")


def unscoped_enum_uses(source: str, name: str) -> list[str]:
    """``Class.Member`` where Member is an enum member of Class reached without its enum's name."""
    tree = ast.parse(source, name)
    imported: dict[str, object] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "qgis":
            module = importlib.import_module(node.module)
            for alias in node.names:
                if hasattr(module, alias.name):
                    imported[alias.asname or alias.name] = getattr(module, alias.name)
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in imported):
            continue
        owner = imported[node.value.id]
        value = getattr(owner, node.attr, None)
        if value is not None and not isinstance(value, type) and _is_enum_member(value):
            found.append(f"{name}:{node.lineno}: {node.value.id}.{node.attr} "
                         f"(use {node.value.id}.{type(value).__name__}.{node.attr})")
    return found


def test_every_enum_member_is_reached_through_its_enum(qgis_app):
    found = [line for path in python_files()
             for line in unscoped_enum_uses(path.read_text(), str(path.relative_to(ROOT)))]
    assert not found, "unscoped enum members (PyQt6 has only the scoped form):\n" + "\n".join(found)


def test_the_scanner_sees_an_unscoped_member(qgis_app):
    """The scan above can fail: these three are reported, their scoped forms are not."""
    found = unscoped_enum_uses(
        "from qgis.core import QgsProcessing, Qgis\n"
        "from qgis.PyQt.QtCore import Qt\n"
        "a = QgsProcessing.TypeVectorPolygon\n"
        "b = Qt.AlignLeft\n"
        "c = Qgis.Critical\n"
        "d = QgsProcessing.SourceType.TypeVectorPolygon, Qt.AlignmentFlag.AlignLeft, Qgis.MessageLevel.Critical\n",
        "sample.py")
    assert [line.split(": ")[1].split(" ")[0] for line in found] == [
        "QgsProcessing.TypeVectorPolygon", "Qt.AlignLeft", "Qgis.Critical"]


@pytest.mark.parametrize("kind, qt5_name", [("string", "String"), ("int", "Int"), ("double", "Double"),
                                            ("datetime", "DateTime")])
def test_field_types_through_the_shim(kind, qt5_name, qgis_app):
    from qgis.core import QgsField
    from qgis.PyQt.QtCore import QVariant

    from cloud_probability.processing_provider.compat import field_type

    field = QgsField("f", field_type(kind))
    # Qt5's own QVariant type of that name: what QGIS 3.22 stores for such a field
    assert field.type() == getattr(QVariant, qt5_name)  # noqa: QGS402 — the Qt5 side of the comparison


def test_no_compiled_resources_and_icons_from_files():
    # one resource file, the manifest at the top level; nothing made from it
    assert not own_files("resources_rc.py") and not own_files("*.rcc")
    assert own_files("*.qrc") == [ROOT / "resources.qrc"]
    for path in python_files():
        text = path.read_text()
        # a path into compiled resources, or pyrcc's own output (flake8-qgis only knows it as resources_rc)
        assert ":/plugins/" not in text and "qInitResources" not in text or path == Path(__file__), path
    import configparser

    meta = configparser.ConfigParser()
    meta.read(ROOT / "metadata.txt")
    assert (ROOT / meta["general"]["icon"]).is_file()


IMAGE_SUFFIXES = (".svg", ".png", ".ico", ".jpg", ".jpeg", ".gif")
SHIPPED_CODE = ("__init__.py", "plugin.py", "processing_provider", "ui", "core")


def icons_the_code_uses() -> set[str]:
    """Paths, relative to the plugin folder, of every image the shipped code and metadata.txt name.

    A string constant naming an image file (``"cloudprob.svg"`` in ``ROOT / "icons" / "cloudprob.svg"``,
    or ``"icons/cloudprob.svg"``) counts; a bare file name is taken to be in icons/.
    """
    import configparser

    used = set()
    for path in python_files():
        if path.relative_to(ROOT).parts[0] not in SHIPPED_CODE:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and node.value.lower().endswith(IMAGE_SUFFIXES) and " " not in node.value:
                used.add(node.value if "/" in node.value else f"icons/{node.value}")
    meta = configparser.ConfigParser()
    meta.read(ROOT / "metadata.txt")
    used.add(meta["general"]["icon"])
    return used


def test_resources_qrc_lists_every_icon_the_code_uses_and_each_exists():
    import xml.etree.ElementTree as ET

    rcc = ET.parse(ROOT / "resources.qrc").getroot()
    assert rcc.tag == "RCC"  # Qt's resource format, as Qt5's and Qt6's rcc read it
    resources = rcc.findall("qresource")
    assert [r.get("prefix") for r in resources] == ["/plugins/cloud_probability"]
    listed = [f.text.strip() for f in resources[0].findall("file")]
    assert len(listed) == len(set(listed)), listed
    used = icons_the_code_uses()
    assert "icons/cloudprob.svg" in used  # the plugin's and the provider's icon, found by the scan
    assert used <= set(listed), f"used but not in resources.qrc: {sorted(used - set(listed))}"
    for name in listed:
        assert (ROOT / name).is_file(), f"resources.qrc lists {name}, which does not exist"
    # the manifest is complete: no icon ships without being listed
    shipped = {p.relative_to(ROOT).as_posix() for p in (ROOT / "icons").rglob("*") if p.is_file()}
    assert shipped == set(listed), shipped ^ set(listed)
