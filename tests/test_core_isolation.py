"""core/ imports neither QGIS nor Qt, nor the sample-archive generator (a fixture and test oracle,
not part of the method), and runs in a Python that never loaded them."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

CORE = Path(__file__).resolve().parent.parent / "core"
FORBIDDEN = ("qgis", "PyQt5", "PyQt6", "sip", "processing")
GENERATOR = ("sampledata", "sample_archive")  # the sample archive's generator, wherever it is imported from


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                names.append(node.module)
            elif node.level > 1:  # reaching out of core/ into the plugin's other folders
                names.append("." * node.level + (node.module or ""))
    return names


def test_no_qgis_or_qt_import_under_core():
    offenders = {}
    for path in sorted(CORE.rglob("*.py")):
        bad = [n for n in _imports(path) if n.split(".")[0] in FORBIDDEN or n.startswith("..")
               or any(part in GENERATOR for part in n.split("."))]
        if bad:
            offenders[str(path.relative_to(CORE.parent))] = bad
    assert not offenders, f"core/ must not import QGIS, Qt, the other plugin folders or the sample generator: {offenders}"


def test_core_modules_import_without_qgis(tmp_path):
    modules = sorted(p.stem for p in CORE.glob("*.py") if p.stem != "__init__")
    assert modules, "no core modules found"
    link = tmp_path / "cloud_probability"
    link.symlink_to(CORE.parent, target_is_directory=True)
    code = (
        "import sys, importlib\n"
        f"for m in {modules!r}: importlib.import_module('cloud_probability.core.' + m)\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('qgis', 'PyQt5', 'PyQt6')\n"
        "                or m.startswith('cloud_probability.sampledata'))\n"
        "print(loaded)\n"
        "sys.exit(1 if loaded else 0)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr


def _core_graph(folder: Path = CORE) -> dict[str, set[str]]:
    """A folder's modules and the modules of that folder each imports, anywhere in it (inside functions
    too: an import hidden in a function is still a dependency)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(folder.glob("*.py")):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    deps.add(node.module.split(".")[0])
                else:  # from . import http
                    deps.update(a.name for a in node.names)
        graph[path.stem] = {d for d in deps if (folder / f"{d}.py").exists()} - {path.stem}
    return graph


def test_core_has_no_import_circle():
    """Each core module imports only modules below it: a circle (stac → reading → planetary → stac was one)
    means no module of it can be read, tested or moved apart from the others."""
    _no_circle(_core_graph())
    assert {"stac", "catalogue", "reading", "planetary"} <= set(_core_graph())


def test_processing_provider_has_no_import_circle():
    """The same for the algorithms' folder (base ↔ common was one)."""
    _no_circle(_core_graph(CORE.parent / "processing_provider"))


def _no_circle(graph: dict[str, set[str]]) -> None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module):
        state[module] = 1
        stack.append(module)
        for dep in sorted(graph[module]):
            if state.get(dep) == 1:
                raise AssertionError("import circle: " + " → ".join(stack[stack.index(dep):] + [dep]))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
