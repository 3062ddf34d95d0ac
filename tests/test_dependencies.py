"""Missing Python packages: said in one sentence before any work, and installed from QGIS.

Packages are made missing for real: a finder at the head of ``sys.meta_path`` refuses them (so
``import`` raises ModuleNotFoundError exactly as for an absent package) and their loaded modules
are set aside for the test. The install runs the real interpreter through pip in a QProcess
against wheels built here, with no index; and, in QGIS 3.22 itself with a fresh profile, for the
real packages from the package registry (issue 22).
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

MENU_PATH = "Plugins › Cloud probability › Install Python packages…"  # what the issue asks users be told


class _Refuse(importlib.abc.MetaPathFinder):
    def __init__(self, names):
        self.names = set(names)

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


@contextlib.contextmanager
def absent(*names):
    """The packages ``names`` cannot be imported inside the block (their loaded modules come back after)."""
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] in names}
    for key in saved:
        del sys.modules[key]
    finder = _Refuse(names)
    sys.meta_path.insert(0, finder)
    importlib.invalidate_caches()
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        for key in [k for k in sys.modules if k.split(".")[0] in names]:
            del sys.modules[key]
        sys.modules.update(saved)


@contextlib.contextmanager
def broken(name, tmp_path, error="numpy.core.multiarray failed to import"):
    """``name`` is found but its import fails, as a wheel built for another numpy does."""
    folder = tmp_path / "broken"
    (folder / name).mkdir(parents=True)
    (folder / name / "__init__.py").write_text(f"raise ImportError({error!r})\n")
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] == name}
    for key in saved:
        del sys.modules[key]
    sys.path.insert(0, str(folder))
    importlib.invalidate_caches()
    try:
        yield
    finally:
        sys.path.remove(str(folder))
        for key in [k for k in sys.modules if k.split(".")[0] == name]:
            del sys.modules[key]
        sys.modules.update(saved)


def clean_pip_environment() -> dict:
    """No pip configuration of this machine (its indexes, find-links, constraints) in the runs."""
    env = {k: None for k in os.environ if k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


# ------------------------------------------------------------------ the sentence, before any work
def test_model_and_algorithms_name_a_missing_package_before_any_work(provider, tmp_path):
    from qgis import processing
    from qgis.core import QgsApplication, QgsProcessingException

    registry = QgsApplication.processingRegistry()
    model = registry.algorithmById("cloudprob:annualcloudprobability")
    zonal = registry.algorithmById("cloudprob:zonalstatistics")
    search = registry.algorithmById("cloudprob:searchscenes")
    assert model.canExecute() == (True, "") and zonal.canExecute() == (True, "")
    with absent("exactextract"):
        for alg in (model, zonal):
            ok, message = alg.canExecute()
            assert not ok
            assert message.startswith(f"{alg.displayName()} needs the Python package exactextract ")
            assert MENU_PATH in message and "pystac-client" not in message  # only what is missing
            assert message.count(". ") == 0 and message.endswith(".")  # one sentence
        assert search.canExecute() == (True, "")

        out = tmp_path / "zones.gpkg"
        with pytest.raises(QgsProcessingException) as raised:
            processing.run("cloudprob:zonalstatistics", {
                "INPUT_RASTER": str(tmp_path / "p.tif"), "ZONES": "Polygon?crs=EPSG:27700",
                "ZONE_ID_FIELD": "id", "OUTPUT": str(out)})
        assert "exactextract" in str(raised.value) and MENU_PATH in str(raised.value)
        assert "Traceback" not in str(raised.value) and not out.exists()

        frequency = tmp_path / "frequency.tif"
        with pytest.raises(QgsProcessingException) as raised:
            processing.run("cloudprob:annualcloudprobability", {
                "STAC_URL": "http://127.0.0.1:9/", "AOI": "530000,531000,170000,171000 [EPSG:27700]",
                "ZONES": "Polygon?crs=EPSG:27700", "ZONE_ID_FIELD": "id", "frequency:PROBABILITY": str(frequency)})
        assert model.canExecute()[1] in str(raised.value) and not frequency.exists()

    with absent("pystac_client"):
        ok, message = search.canExecute()
        assert not ok and "pystac-client" in message and MENU_PATH in message
        scenes = tmp_path / "scenes.gpkg"
        with pytest.raises(QgsProcessingException) as raised:
            processing.run("cloudprob:searchscenes", {
                "STAC_URL": "http://127.0.0.1:9/", "AOI": "530000,531000,170000,171000 [EPSG:27700]",
                "START_DATE": "2024-01-01", "END_DATE": "2024-01-31", "OUTPUT": str(scenes)})
        assert "pystac-client" in str(raised.value) and "ModuleNotFoundError" not in str(raised.value)
        assert not scenes.exists()


def test_an_installed_package_that_does_not_import_is_named_before_the_run(provider, tmp_path):
    from qgis import processing
    from qgis.core import QgsProcessingException

    with broken("exactextract", tmp_path):
        with pytest.raises(QgsProcessingException) as raised:
            processing.run("cloudprob:zonalstatistics", {
                "INPUT_RASTER": str(tmp_path / "p.tif"), "ZONES": "Polygon?crs=EPSG:27700",
                "ZONE_ID_FIELD": "id", "OUTPUT": str(tmp_path / "zones.gpkg")})
    message = str(raised.value)
    assert "exactextract, which is installed but does not import" in message
    assert "numpy.core.multiarray failed to import" in message and MENU_PATH in message


def test_optional_packages_are_asked_for_only_when_the_option_is_chosen(provider):
    from qgis.core import QgsApplication, QgsProcessingContext

    smooth = QgsApplication.processingRegistry().createAlgorithmById("cloudprob:smoothprobability")
    context = QgsProcessingContext()
    with absent("distributed"):
        assert smooth.canExecute() == (True, "")
        assert "distributed" not in smooth.required_modules({}, context)
        ok, message = smooth.checkParameterValues({"DASK_SCHEDULER": "tcp://127.0.0.1:8786"}, context)
        assert not ok and "distributed (running on a Dask scheduler)" in message


# ------------------------------------------------------------------ start-up and the dock
def test_startup_warns_on_the_message_bar_with_an_install_button(qgis_iface, qgis_processing):
    from qgis.core import QgsApplication

    import cloud_probability

    registry = QgsApplication.processingRegistry()
    had = registry.providerById("cloudprob")
    if had is not None:
        registry.removeProvider(had)
    bar = qgis_iface.messageBar()
    bar.clearWidgets()
    with absent("pystac_client"):
        plugin = cloud_probability.classFactory(qgis_iface)
        plugin.initGui()  # no exception, no traceback: a warning
        try:
            item = bar.currentItem()
            assert item is not None and "pystac-client" in item.text() and "exactextract" not in item.text()
            assert item.install_button.text() == "Install…"
            item.install_button.click()
            dialog = item.dialog
            assert [p.name for p in dialog.chosen()] == ["pystac-client"]
            dialog.close()
        finally:
            plugin.unload()
    assert bar.currentItem() is None
    from conftest import ensure_provider

    ensure_provider()


def test_no_startup_warning_when_everything_imports(qgis_iface, qgis_processing):
    from qgis.core import QgsApplication

    import cloud_probability
    from cloud_probability.processing_provider.dependencies import startup_missing

    assert startup_missing() == []
    registry = QgsApplication.processingRegistry()
    if registry.providerById("cloudprob") is not None:
        registry.removeProvider(registry.providerById("cloudprob"))
    bar = qgis_iface.messageBar()
    bar.clearWidgets()
    plugin = cloud_probability.classFactory(qgis_iface)
    plugin.initGui()
    try:
        assert bar.currentItem() is None
        assert plugin.install_action.text() == "Install Python packages…"
    finally:
        plugin.unload()
    from conftest import ensure_provider

    ensure_provider()


def test_dock_says_what_is_missing_instead_of_a_traceback(qgis_iface, provider, qtbot):
    from qgis.core import QgsApplication, QgsCoordinateReferenceSystem, QgsRectangle

    from cloud_probability.ui.dock import CloudProbabilityDock

    dock = CloudProbabilityDock(qgis_iface)
    qtbot.addWidget(dock)
    dock.catalogue.setCurrentIndex(2)
    dock.url.setText("http://127.0.0.1:9/")
    dock.set_drawn_extent(QgsRectangle(530000, 170000, 531000, 171000), QgsCoordinateReferenceSystem("EPSG:27700"))
    dock.area_drawn.setChecked(True)
    qgis_iface.messageBar().clearWidgets()
    with absent("pystac_client"):
        expected = QgsApplication.processingRegistry().algorithmById("cloudprob:searchscenes").canExecute()[1]
        dock.search()
        assert dock.status.text() == expected and "pystac-client" in expected
        assert dock.task is None and dock.search_button.isEnabled()  # nothing started
        item = qgis_iface.messageBar().currentItem()
        assert item is dock.packages_message and item.install_button.text() == "Install…"
    qgis_iface.messageBar().clearWidgets()


# ------------------------------------------------------------------ finding the interpreter
def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    path.chmod(0o755)
    return path


def test_the_interpreter_of_each_platforms_layout(tmp_path):
    from cloud_probability.processing_provider.dependencies import qgis_python

    # OSGeo4W (network installer): C:\OSGeo4W\bin\qgis-bin.exe, Python home apps\Python312
    root = tmp_path / "OSGeo4W"
    _touch(root / "bin" / "qgis-bin.exe")
    python = _touch(root / "bin" / "python3.exe")
    _touch(root / "apps" / "Python312" / "python.exe")
    found = qgis_python(str(root / "bin" / "qgis-bin.exe"), str(root / "apps" / "Python312"), "win32", (3, 12), {})
    assert found == python
    # standalone installer without OSGeo4W's bin\python3.exe: the Python home's own python.exe
    standalone = tmp_path / "QGIS 3.40.4"
    _touch(standalone / "bin" / "qgis-ltr-bin.exe")
    home_python = _touch(standalone / "apps" / "Python312" / "python.exe")
    assert qgis_python(str(standalone / "bin" / "qgis-ltr-bin.exe"), str(standalone / "apps" / "Python312"),
                       "win32", (3, 12), {}) == home_python
    # macOS bundle: QGIS.app/Contents/MacOS/QGIS runs Contents/MacOS/bin/python3
    app = tmp_path / "QGIS.app" / "Contents"
    _touch(app / "MacOS" / "QGIS")
    mac_python = _touch(app / "MacOS" / "bin" / "python3")
    assert qgis_python(str(app / "MacOS" / "QGIS"), str(app / "Frameworks"), "darwin", (3, 11), {}) == mac_python
    # Linux: sys.executable may be the qgis binary; the interpreter is under sys.exec_prefix
    usr = tmp_path / "usr"
    _touch(usr / "bin" / "qgis")
    linux_python = _touch(usr / "bin" / "python3.11")
    assert qgis_python(str(usr / "bin" / "qgis"), str(usr), "linux", (3, 11), {}) == linux_python
    # …or already a python: this installation's (a virtual environment's own bin too)
    assert qgis_python(str(linux_python), str(usr), "linux", (3, 11), {}) == linux_python
    # never a python3 that PATH gave the embedded Python (a pyenv shim, another installation): QGIS's
    # own binary on Debian has sys.executable = the first python3 on PATH (issue 22)
    shim = _touch(tmp_path / ".pyenv" / "shims" / "python3")
    assert qgis_python(str(shim), str(usr), "linux", (3, 11), {}) == linux_python
    assert qgis_python(str(shim), "/nonexistent", "linux", (3, 11), {}) is None
    # never the QGIS binary itself
    assert qgis_python(str(usr / "bin" / "qgis"), str(tmp_path / "empty"), "linux", (3, 11), {}) is None
    # in this process: the interpreter running the tests
    assert qgis_python() == Path(sys.executable)


# ------------------------------------------------------------------ the install itself
PROBE = """\
VALUE = 42
"""


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory):
    """Real wheels built by pip here: a probe needing numpy, one needing numpy ≥ 99, one needing that one,
    one needing PyYAML ≥ 99 (compiled, Debian's 6.0 here), and a numpy 99 and a PyYAML 99."""
    root = tmp_path_factory.mktemp("wheels")
    projects = {
        "cloudprob_probe": ("1.0", ["numpy>=1.0"]),
        "cloudprob_probe_next": ("1.0", ["numpy>=99"]),
        "cloudprob_probe_indirect": ("1.0", ["cloudprob-probe-next>=1"]),
        "cloudprob_probe_yaml": ("1.0", ["pyyaml>=99"]),
        "numpy": ("99.0", []),
        "PyYAML": ("99.0", []),
    }
    sources = []
    for name, (version, requires) in projects.items():
        src = root / "src" / name
        module = f"cloudprob_fake_{name.lower()}" if name in ("numpy", "PyYAML") else name
        (src / module).mkdir(parents=True)
        (src / module / "__init__.py").write_text(PROBE)
        (src / "pyproject.toml").write_text(
            '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n'
            f'[project]\nname = "{name}"\nversion = "{version}"\ndependencies = {requires!r}\n'
            f'[tool.setuptools]\npackages = ["{module}"]\n'.replace("'", '"'))
        sources.append(str(src))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    folder = root / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "--no-index",
                    "--disable-pip-version-check", "-w", str(folder), *sources], check=True, env=env,
                   capture_output=True, cwd=root)
    assert len(list(folder.glob("*.whl"))) == len(projects)
    return folder


@pytest.fixture()
def site_cleanup():
    """The site folders and modules an install added to this process, removed after the test."""
    path, modules = list(sys.path), set(sys.modules)
    yield
    sys.path[:] = path
    for key in set(sys.modules) - modules:
        if key.startswith("cloudprob_probe"):
            del sys.modules[key]


def _dialog(packages, base, pip_args, **options):
    from cloud_probability.ui.install_dialog import InstallDialog

    return InstallDialog(packages, base=base, pip_args=pip_args, environment=clean_pip_environment(), **options)


# The interpreter found for this process (a virtual environment's here), and the system Python
# under it, which refuses --user installs unless told the folder is not the system's (PEP 668).
INTERPRETERS = [None] + ([sys._base_executable] if getattr(sys, "_base_executable", sys.executable) != sys.executable
                         else [])


@pytest.mark.parametrize("python", INTERPRETERS, ids=lambda p: "found" if p is None else "system")
def test_install_from_a_wheel_folder_works_without_a_restart(python, wheelhouse, tmp_path, qtbot, qgis_app,
                                                             site_cleanup):
    import numpy

    from cloud_probability.processing_provider.dependencies import Package, missing, site_dir

    probe = Package("cloudprob_probe", "cloudprob-probe", "cloudprob-probe==1.0", "the install test")
    base = tmp_path / "profile" / "python" / "cloud_probability_packages"
    assert missing("cloudprob_probe") == ["cloudprob_probe"]
    options = {} if python is None else {"python": python}
    dialog = _dialog([probe], base, ("--no-index", "--find-links", str(wheelhouse)), **options)
    qtbot.addWidget(dialog)
    assert [p.name for p in dialog.chosen()] == ["cloudprob-probe"]
    assert dialog.start()
    assert dialog.progress.maximum() == 0 and dialog.cancel_button.isEnabled()  # busy, and can be stopped
    qtbot.waitUntil(lambda: dialog.result_ok is not None, timeout=120_000)
    log = dialog.log.toPlainText()
    assert dialog.result_ok, log
    assert f"at {python or sys.executable} " in log  # a real interpreter of this Python ran pip
    assert "Successfully installed cloudprob-probe-1.0" in log
    assert dialog.status.text() == "cloudprob-probe installed and working: no restart needed."
    assert dialog.progress.maximum() == 1 and dialog.progress.value() == 1
    # importable here, from the profile's folder, without a restart
    module = importlib.import_module("cloudprob_probe")
    assert module.VALUE == 42
    assert Path(module.__file__).is_relative_to(site_dir(base))
    # the loaded numpy pinned, and kept: pip found it satisfied and put no numpy into the folder
    pins = [line.split("#")[0].strip() for line in (base / "constraints.txt").read_text().splitlines()]
    assert f"numpy=={numpy.__version__}" in pins
    assert not list(site_dir(base).glob("numpy*"))


def test_a_package_loaded_before_the_install_needs_a_restart(wheelhouse, tmp_path, qtbot, qgis_app, site_cleanup):
    from cloud_probability.processing_provider.dependencies import Package

    probe = Package("cloudprob_probe", "cloudprob-probe", "cloudprob-probe==1.0", "the install test")
    (tmp_path / "old" / "cloudprob_probe").mkdir(parents=True)
    (tmp_path / "old" / "cloudprob_probe" / "__init__.py").write_text("VALUE = 41\n")
    sys.path.insert(0, str(tmp_path / "old"))
    importlib.invalidate_caches()
    assert importlib.import_module("cloudprob_probe").VALUE == 41  # an older copy, loaded
    sys.path.remove(str(tmp_path / "old"))
    dialog = _dialog([probe], tmp_path / "packages", ("--no-index", "--find-links", str(wheelhouse)))
    qtbot.addWidget(dialog)
    from qgis.PyQt.QtCore import Qt

    item = dialog.list.item(0)
    assert item.text() == "cloudprob-probe — the install test (installed)" and dialog.chosen() == []
    item.setCheckState(Qt.CheckState.Checked)  # the user asks for it anyway
    assert dialog.start()
    qtbot.waitUntil(lambda: dialog.result_ok is not None, timeout=120_000)
    assert dialog.result_ok, dialog.log.toPlainText()
    assert dialog.status.text() == "cloudprob-probe installed; restart QGIS to use the new cloudprob-probe " \
                                   "(an older one is loaded)."


def test_a_package_that_needs_another_numpy_is_refused(wheelhouse, tmp_path, qtbot, qgis_app, site_cleanup):
    import numpy

    from cloud_probability.processing_provider.dependencies import Package, site_dir

    probe = Package("cloudprob_probe_next", "cloudprob-probe-next", "cloudprob-probe-next==1.0", "the install test")
    base = tmp_path / "packages"
    dialog = _dialog([probe], base, ("--no-index", "--find-links", str(wheelhouse)))
    qtbot.addWidget(dialog)
    assert dialog.start()
    qtbot.waitUntil(lambda: dialog.result_ok is not None, timeout=120_000)
    log = dialog.log.toPlainText()
    assert dialog.result_ok is False, log
    # without the constraint pip would install the wheel folder's numpy 99 next to QGIS's
    constraint = next(line for line in log.split("conflict is caused by", 1)[-1].splitlines()
                      if "The user requested (constraint) numpy" in line)
    assert f"=={numpy.__version__}" in constraint, log
    # which requirement, against what, and what to do (the probe's own requirement, this numpy)
    assert dialog.status.text() == (
        f"pip could not install cloudprob-probe-next: cloudprob-probe-next 1.0 needs numpy>=99, but QGIS has "
        f"loaded numpy {numpy.__version__}, which its compiled packages are built for, and the installer leaves "
        f"that as it is: ask for an older cloudprob-probe-next that works with it, or update numpy with the "
        f"installer QGIS came from (apt, OSGeo4W Setup or conda) and restart QGIS (see the log).")
    assert not list(site_dir(base).glob("numpy*")) and not list(site_dir(base).glob("cloudprob*"))


@pytest.mark.parametrize("probe, sentence", [
    ("cloudprob_probe_indirect",
     "cloudprob-probe-next 1.0 needs numpy>=99, but QGIS has loaded numpy {numpy}, which its compiled packages are "
     "built for, and the installer leaves that as it is: ask for an older cloudprob-probe-indirect whose "
     "cloudprob-probe-next works with it, or update numpy with the installer QGIS came from (apt, OSGeo4W Setup or "
     "conda) and restart QGIS"),
    ("cloudprob_probe_yaml",
     "cloudprob-probe-yaml 1.0 needs pyyaml>=99, but QGIS's Python has PyYAML {pyyaml}, compiled for it, and the "
     "installer leaves that as it is: ask for an older cloudprob-probe-yaml that works with it, or update PyYAML "
     "with the installer QGIS came from (apt, OSGeo4W Setup or conda) and restart QGIS"),
])
def test_a_requirement_that_what_qgis_has_cannot_meet_is_named_with_what_to_do(probe, sentence, wheelhouse, tmp_path,
                                                                               qtbot, qgis_app, site_cleanup):
    """pip's own conflict, from its real run, in one sentence: who needs what, what QGIS's Python has
    instead (the loaded numpy; a compiled package, here Debian's PyYAML), and what the user can do."""
    import numpy
    import yaml

    from cloud_probability.processing_provider.dependencies import Package, site_dir

    name = probe.replace("_", "-")
    package = Package(probe, name, f"{name}==1.0", "the install test")
    base = tmp_path / "packages"
    dialog = _dialog([package], base, ("--no-index", "--find-links", str(wheelhouse)))
    qtbot.addWidget(dialog)
    assert dialog.start()
    qtbot.waitUntil(lambda: dialog.result_ok is not None, timeout=120_000)
    log = dialog.log.toPlainText()
    assert dialog.result_ok is False, log
    assert "ResolutionImpossible" in log  # pip's word for it
    expected = sentence.format(numpy=numpy.__version__, pyyaml=yaml.__version__)
    assert dialog.status.text() == f"pip could not install {name}: {expected} (see the log).", log
    assert not list(site_dir(base).glob("cloudprob*")) and not list(site_dir(base).glob("*yaml*"))


def test_cancel_stops_pip(tmp_path, qtbot, qgis_app):
    from cloud_probability.processing_provider.dependencies import Package, site_dir

    # a package index on loopback that accepts connections and never answers
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    accepted, held, stop = threading.Event(), [], threading.Event()

    def serve():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
                accepted.set()
            except OSError:
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        probe = Package("cloudprob_probe", "cloudprob-probe", "cloudprob-probe", "the install test")
        dialog = _dialog([probe], tmp_path / "packages",
                         ("--index-url", f"http://127.0.0.1:{server.getsockname()[1]}/simple", "--no-cache-dir",
                          "--timeout", "60", "--retries", "0"))
        qtbot.addWidget(dialog)
        assert dialog.start()
        qtbot.waitUntil(accepted.is_set, timeout=60_000)
        assert dialog.result_ok is None and dialog.installer.running()
        dialog.cancel_button.click()
        qtbot.waitUntil(lambda: dialog.result_ok is not None, timeout=30_000)
        assert dialog.result_ok is False and not dialog.installer.running()
        assert dialog.status.text().startswith("Cancelled: cloudprob-probe not installed")
        assert not list(site_dir(tmp_path / "packages").glob("cloudprob*"))
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()


# ------------------------------------------------------------------ the real packages, in the real QGIS
# Run by `qgis --code` in a fresh profile, the plugin enabled: the dialog of Plugins › Cloud probability ›
# Install Python packages… with its defaults (QGIS's interpreter, the profile's folder), for the packages
# pinned as requirements.txt pins them, from the package registry.
INSTALL_IN_QGIS = r'''
import dataclasses, json, sys
from qgis.core import QgsApplication
from qgis.PyQt.QtCore import QTimer
from qgis.utils import iface, plugins

CONFIG = json.loads({config!r})
report = {{"executable": sys.executable, "settings": QgsApplication.qgisSettingsDirPath(),
          "plugin": "cloud_probability" in plugins}}
try:
    from cloud_probability.processing_provider import dependencies as deps
    from cloud_probability.ui.install_dialog import InstallDialog

    report["qgis_python"] = str(deps.qgis_python())
    report["startup_missing"] = deps.startup_missing()
    item = iface.messageBar().currentItem()
    report["warning"] = item.text() if item is not None else ""
    packages = [dataclasses.replace(deps.PACKAGES[m], requirement=r) for m, r in CONFIG["requirements"].items()]
    dialog = InstallDialog(packages)
    report["intro"] = dialog.findChildren(type(dialog.status))[0].text()
    report["loaded_before"] = sorted({{name.split(".")[0] for name in sys.modules}})
    report["started"] = dialog.start()
except Exception:
    import traceback
    report["error"] = traceback.format_exc()
    dialog = None


def finish():
    if dialog is not None:
        report.update(ok=dialog.result_ok, status=dialog.status.text(), log=dialog.log.toPlainText())
    with open(CONFIG["out"], "w") as fh:
        json.dump(report, fh)
    QgsApplication.instance().quit()


def poll():
    if dialog is None or dialog.result_ok is not None:
        finish()
    else:
        QTimer.singleShot(200, poll)


QTimer.singleShot(200, poll)
'''

# A later QGIS session on the same profile: what imports, from where, and whether it works.
USE_IN_QGIS = r'''
import importlib, importlib.metadata, json, sys
from qgis.core import QgsApplication
from qgis.PyQt.QtCore import QTimer

CONFIG = json.loads({config!r})
report = {{"path": sys.path}}
try:
    from cloud_probability.processing_provider import dependencies as deps

    report["startup_missing"] = deps.startup_missing()
    report["modules"] = {{}}
    for module in ("pystac_client", "exactextract", "urllib3", "distributed", "requests", "numpy", "dask"):
        imported = importlib.import_module(module)
        report["modules"][module] = imported.__file__
    report["versions"] = {{d: importlib.metadata.version(d) for d in
                          ("pystac-client", "exactextract", "urllib3", "distributed", "requests", "numpy")}}
    report["numpy_loaded"] = sys.modules["numpy"].__version__
    report["requests_loaded"] = sys.modules["requests"].__version__

    # exactextract (a compiled wheel) with Debian's rasterio, geopandas and numpy: rows 0..9 valued 0..9,
    # an area over rows 0..4 exactly
    import geopandas as gpd
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin
    from shapely.geometry import box
    from exactextract import exact_extract

    with rasterio.open(CONFIG["raster"], "w", driver="GTiff", width=10, height=10, count=1, dtype="float32",
                       crs="EPSG:27700", transform=from_origin(0, 100, 10, 10)) as dst:
        dst.write(np.repeat(np.arange(10, dtype="float32")[:, None], 10, axis=1)[None])
    zones = gpd.GeoDataFrame({{"id": [1]}}, geometry=[box(0, 50, 100, 100)], crs="EPSG:27700")
    report["zonal_mean"] = float(exact_extract(CONFIG["raster"], zones, ["mean"], output="pandas")["mean"][0])

    # pystac-client (with the requests it needed) against the STAC API on loopback
    import pystac_client
    found = pystac_client.Client.open(CONFIG["stac"]).search(collections=[CONFIG["collection"]], limit=100)
    report["stac_items"] = len(list(found.items()))

    # distributed: a task on an in-process cluster
    from distributed import Client, LocalCluster
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        report["dask_sum"] = client.submit(sum, [1, 2, 39]).result()
except Exception:
    import traceback
    report["error"] = traceback.format_exc()
with open(CONFIG["out"], "w") as fh:
    json.dump(report, fh)
QTimer.singleShot(0, QgsApplication.instance().quit)
'''


def _requirements_txt() -> dict:
    """requirements.txt's pins of the plugin's pip packages, by import name (urllib3: not pinned there)."""
    from conftest import ROOT

    lines = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    pinned = {line.split("==")[0]: line for line in lines if "==" in line}
    return {"pystac_client": pinned["pystac-client"], "exactextract": pinned["exactextract"],
            "urllib3": "urllib3>=1.26", "distributed": pinned["distributed"]}


def _qgis_desktop(script: str, profiles: Path, env: dict, timeout: float) -> str:
    """QGIS desktop under Xvfb running ``script`` (qgis --code) in the profile folder ``profiles``;
    xvfb-run, Xvfb and QGIS in a process group of their own, ended whatever happens. Its output."""
    import signal
    import time

    proc = subprocess.Popen(["xvfb-run", "-a", "-s", "-screen 0 1280x1024x24", "qgis", "--nologo", "--noversioncheck",
                             "--profiles-path", str(profiles), "--code", script], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        out = b""
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    os.killpg(proc.pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.2)
        proc.wait()
    return (out or b"").decode(errors="replace")


def _dpkg_version(package: str) -> str:
    """The upstream version of an installed Debian package (1.24.2 of 1:1.24.2-1)."""
    full = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True,
                          check=True).stdout
    return full.split(":")[-1].split("-")[0].split("+")[0]


def test_the_real_packages_install_into_a_fresh_profile_of_this_qgis(sample_servers, tmp_path):
    """Issue 22: on stock Debian 12 the installer pinned Debian's requests 2.28.1 while every pystac-client
    >= 0.8 needs requests >= 2.28.2 (ResolutionImpossible), and QGIS's embedded Python, whose
    sys.executable comes from PATH, could hand pip to a python3 from PATH. Here QGIS 3.22 itself runs the
    dialog with a decoy python3 first on PATH, the real packages come from the registry into a fresh
    profile, and a later QGIS session imports them and uses them."""
    import shutil
    import sysconfig

    from conftest import ROOT

    assert shutil.which("xvfb-run") and shutil.which("qgis"), "make test installs xvfb and qgis"
    # a python3 that only leaves a mark: whoever runs it took PATH's python3 for QGIS's
    decoy = tmp_path / "decoy-bin"
    decoy.mkdir()
    mark = tmp_path / "decoy-ran"
    (decoy / "python3").write_text(f"#!/bin/sh\necho \"$@\" > '{mark}'\nexit 3\n")
    (decoy / "python3").chmod(0o755)
    profiles = tmp_path / "profiles"
    ini = profiles / "profiles" / "default" / "QGIS" / "QGIS3.ini"
    ini.parent.mkdir(parents=True)
    ini.write_text("[PythonPlugins]\ncloud_probability=true\n\n[qgis]\nshowTips322=false\ncheckVersion=false\n"
                   "allowVersionCheck=false\n")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV", "QT_QPA"))}  # QGIS's own Python, nothing of ours
    env.update(PATH=f"{decoy}{os.pathsep}{os.environ['PATH']}", QGIS_PLUGINPATH=str(ROOT / ".build" / "plugins"),
               PIP_CONFIG_FILE=os.devnull,  # the registry itself, not this machine's pip configuration
               XDG_RUNTIME_DIR=str(tmp_path / "runtime"))
    requirements = _requirements_txt()

    out = tmp_path / "install.json"
    script = tmp_path / "install.py"
    script.write_text(INSTALL_IN_QGIS.format(config=json.dumps({"out": str(out), "requirements": requirements})))
    console = _qgis_desktop(str(script), profiles, env, timeout=540)
    assert out.exists(), console[-4000:]
    report = json.loads(out.read_text())
    assert "error" not in report, report.get("error")
    log = report["log"]
    assert report["ok"] is True, f"{report['status']}\n{log[-5000:]}"

    # the embedded Python took PATH's python3 as sys.executable; pip ran in QGIS's own interpreter anyway
    qgis_python = Path(sysconfig.get_config_var("BINDIR")) / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    assert report["executable"] == str(decoy / "python3")
    assert report["qgis_python"] == str(qgis_python) and str(qgis_python) in report["intro"]
    assert f"Python {sys.version.split()[0]} at {qgis_python} (prefix /usr)" in log
    assert not mark.exists(), mark.read_text()
    # the plugin warned at start-up about exactly what stock Debian lacks
    assert report["startup_missing"] == ["pystac_client", "exactextract"]
    assert "pystac-client" in report["warning"] and "exactextract" in report["warning"]
    # the constraints kept Debian's numpy and compiled packages and let requests be newer
    base = Path(report["settings"]) / "python" / "cloud_probability_packages"
    constraints = {line.split("#")[0].strip() for line in (base / "constraints.txt").read_text().splitlines()}
    assert f"numpy=={_dpkg_version('python3-numpy')}" in constraints
    assert f"rasterio=={_dpkg_version('python3-rasterio')}" in constraints
    assert not [c for c in constraints if c.startswith("requests")]
    assert "Successfully installed" in log and "pystac-client-0.9.1" in log
    # urllib3 is there (Debian's satisfies it): the dialog ticks the missing ones only. What pip put into the
    # profile's folder that this session had loaded before from Debian (requests, certifi…) needs a restart.
    site = base / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    added = {p.name if p.is_dir() else p.name.split(".")[0] for p in site.iterdir()
             if not p.name.endswith((".dist-info", ".pth")) and not p.name.startswith(("_", "."))}
    shadowed = sorted(added & set(report["loaded_before"]))
    assert "requests" in added and "numpy" not in added
    if shadowed:
        words = shadowed[0] if len(shadowed) == 1 else ", ".join(shadowed[:-1]) + " and " + shadowed[-1]
        plural = "older ones are" if len(shadowed) > 1 else "an older one is"
        expected = f"restart QGIS to use the new {words} ({plural} loaded)."
    else:
        expected = "and working: no restart needed."
    assert report["status"].startswith("pystac-client, exactextract and distributed installed"), report["status"]
    assert report["status"].endswith(expected), report["status"]

    # a later session: everything imports, from where it should, and works
    out = tmp_path / "use.json"
    script = tmp_path / "use.py"
    items = json.loads((sample_servers.workdir / "served_items.json").read_text())["features"]
    script.write_text(USE_IN_QGIS.format(config=json.dumps({
        "out": str(out), "raster": str(tmp_path / "rows.tif"), "stac": sample_servers.stac.url,
        "collection": items[0]["collection"]})))
    console = _qgis_desktop(str(script), profiles, env, timeout=300)
    assert out.exists(), console[-4000:]
    used = json.loads(out.read_text())
    assert "error" not in used, used["error"]
    assert used["startup_missing"] == []
    for module in ("pystac_client", "exactextract", "distributed", "requests", "dask"):
        assert used["modules"][module].startswith(str(site)), (module, used["modules"][module])
    # urllib3 and numpy stay Debian's
    assert used["modules"]["numpy"].startswith("/usr/lib/python3/dist-packages/")
    assert used["modules"]["urllib3"].startswith("/usr/lib/python3/dist-packages/")
    assert used["numpy_loaded"] == _dpkg_version("python3-numpy")
    assert used["versions"]["urllib3"] == _dpkg_version("python3-urllib3")
    pinned = {m: r.split("==")[1] for m, r in requirements.items() if "==" in r}
    assert used["versions"]["pystac-client"] == pinned["pystac_client"]
    assert used["versions"]["exactextract"] == pinned["exactextract"]
    assert used["versions"]["distributed"] == pinned["distributed"]
    requests_version = tuple(int(x) for x in used["requests_loaded"].split(".")[:3])
    assert requests_version >= (2, 28, 2) and used["requests_loaded"] == used["versions"]["requests"]
    assert not list(site.glob("numpy*")) and not list(site.glob("rasterio*")) and not list(site.glob("PyQt5*"))
    assert used["zonal_mean"] == pytest.approx(2.0)  # rows 0..4 of a raster valued by row
    assert used["stac_items"] == len(items)
    assert used["dask_sum"] == 42
