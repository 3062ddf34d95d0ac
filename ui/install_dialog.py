"""Installs missing Python packages into the Python QGIS runs, with progress, a log and Cancel.

:class:`PackageInstaller` runs pip (see processing_provider.dependencies for where and how) in a
QProcess, so QGIS stays responsive; :class:`InstallDialog` shows it; :func:`offer_install` puts a
warning with an *Install…* button on QGIS's message bar.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

from qgis.core import Qgis
from qgis.PyQt.QtCore import QObject, QProcess, QProcessEnvironment, Qt, pyqtSignal
from qgis.PyQt.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
)

from ..processing_provider import dependencies as deps
from ..processing_provider.dependencies import Package


class PackageInstaller(QObject):
    """``pip install --user`` of some packages for QGIS's Python, in a QProcess.

    ``output`` carries pip's log line by line; ``finished(ok, sentence)`` comes once, after the
    packages were made importable in this process (or not: the sentence says whether QGIS needs
    a restart). ``base`` (default: the profile's folder), ``python`` (default: the interpreter
    found by :func:`deps.qgis_python`), ``pip_args`` (e.g. ``--no-index --find-links DIR``) and
    ``environment`` (variables to set, None to remove) are there for other set-ups and tests.
    """

    output = pyqtSignal(str)
    finished = pyqtSignal(bool, str)

    def __init__(self, packages: list[Package], base: str | Path | None = None, python: str | Path | None = None,
                 pip_args: tuple = (), environment: dict | None = None, parent=None):
        super().__init__(parent)
        self.packages = list(packages)
        self.base = Path(base) if base is not None else deps.packages_base()
        self.python = Path(python) if python is not None else deps.qgis_python()
        self.pip_args = tuple(pip_args)
        self.environment = dict(environment or {})
        self.process: QProcess | None = None
        self.cancelled = False
        self.constraints = self.base / "constraints.txt"
        self._pending = ""
        self._error_line: str | None = None
        self._last_line = ""
        self._lines: list[str] = []
        self._loaded_before: set = set()
        self.pins: list = []

    def start(self) -> bool:
        """Starts pip; False (and ``finished``) if it cannot start."""
        if self.python is None:
            self._finish(False, "The Python QGIS runs was not found beside QGIS: install the packages with pip "
                                "from a shell instead (see docs/install.md).")
            return False
        self.base.mkdir(parents=True, exist_ok=True)
        requirements = [p.requirement for p in self.packages]
        self.pins = deps.pins(self.base, [p.name for p in self.packages])
        self.constraints.write_text(deps.constraints_text(found=self.pins), encoding="utf-8")
        self._loaded_before = {p.module for p in self.packages if p.module in sys.modules}
        env = QProcessEnvironment.systemEnvironment()
        for key, value in {**deps.pip_environment(self.base), **self.environment}.items():
            if value is None:
                env.remove(key)
            else:
                env.insert(key, value)
        arguments = deps.pip_arguments(requirements, self.constraints, self.pip_args)
        self.process = QProcess(self)
        self.process.setProcessEnvironment(env)
        self.process.setProcessChannelMode(QProcess.ProcessChannelMode.MergedChannels)
        self.process.readyReadStandardOutput.connect(self._read)
        self.process.finished.connect(self._exited)
        self.process.errorOccurred.connect(self._error)
        self.output.emit(f"Installing {' '.join(requirements)} into {deps.site_dir(self.base)}")
        self.output.emit(f"with {self.python} -m pip install --user, constraints {self.constraints}")
        self.process.start(str(self.python), arguments)
        return True

    def running(self) -> bool:
        return self.process is not None and self.process.state() != QProcess.ProcessState.NotRunning

    def cancel(self) -> None:
        """Stops pip; what it had not finished installing is reported as not installed."""
        if self.running():
            self.cancelled = True
            self.process.kill()

    def _read(self) -> None:
        text = self._pending + bytes(self.process.readAllStandardOutput()).decode("utf-8", "replace")
        lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        self._pending = lines.pop()
        for line in lines:
            self._line(line)

    def _line(self, line: str) -> None:
        if self._error_line is None and line.startswith("ERROR: "):
            self._error_line = line[len("ERROR: "):].strip().rstrip(".")
        if line.strip():
            self._last_line = line.strip()
        self._lines.append(line)
        self.output.emit(line)

    def _flush(self) -> None:
        if self.process is not None:
            self._read()
        if self._pending:
            self._line(self._pending)
            self._pending = ""

    def _error(self, error) -> None:
        if error == QProcess.ProcessError.FailedToStart:
            self._finish(False, f"Could not start {self.python}: {self.process.errorString()}.")

    def _exited(self, code: int, status) -> None:
        self._flush()
        names = deps.join_words([p.name for p in self.packages])
        if self.cancelled:
            self._finish(False, f"Cancelled: {names} not installed (run the install again to complete it).")
        elif status != QProcess.ExitStatus.NormalExit or code != 0:
            # a requirement that what QGIS's Python has cannot meet: which one, and what to do
            reason = deps.explain_conflict("\n".join(self._lines), self.pins, [p.name for p in self.packages])
            reason = reason or self._error_line or self._last_line or f"exit code {code}"
            self._finish(False, f"pip could not install {names}: {reason} (see the log).")
        else:
            self._finish(*self._recheck())

    def _recheck(self) -> tuple[bool, str]:
        """Makes the new packages importable here, imports them, and says whether QGIS needs a restart."""
        deps.activate(self.base)
        importlib.invalidate_caches()
        names = deps.join_words([p.name for p in self.packages])
        stale = [p.name for p in self.packages if p.module in self._loaded_before]
        stale += [m for m in self._shadowed() if m not in {p.module for p in self.packages}]
        problems = deps.import_problems(p.module for p in self.packages)
        if problems:
            for module, error in problems.items():
                self.output.emit(f"{module}: {error}")
            return True, (f"{names} installed, but {deps.join_words([deps.package(m).name for m in problems])} "
                          f"does not import in this QGIS session: restart QGIS.")
        if stale:
            return True, (f"{names} installed; restart QGIS to use the new {deps.join_words(stale)} "
                          f"({'older ones are' if len(stale) > 1 else 'an older one is'} loaded).")
        return True, f"{names} installed and working: no restart needed."

    def _shadowed(self) -> list[str]:
        """Top-level modules now in the folder that this session had already imported from elsewhere
        (a newer requests pip put there): the new copy is used after a restart."""
        folder = deps.site_dir(self.base)
        if not folder.is_dir():
            return []
        names = set()
        for entry in folder.iterdir():
            if entry.suffix in (".dist-info", ".egg-info", ".pth") or entry.name.startswith(("_", ".")):
                continue
            names.add(entry.name if entry.is_dir() else entry.name.split(".")[0])
        shadowed = []
        for name in sorted(names):
            module = sys.modules.get(name)
            where = getattr(module, "__file__", None) if module is not None else None
            if where and not deps._inside(Path(where), folder):
                shadowed.append(name)
        return shadowed

    def _finish(self, ok: bool, message: str) -> None:
        self.output.emit(message)
        self.finished.emit(ok, message)


class InstallDialog(QDialog):
    """Choose the packages, watch pip's log with a busy bar, Cancel; the result in one sentence."""

    installed = pyqtSignal(list)  # import names now importable

    def __init__(self, modules: list | None = None, parent=None, **installer_options):
        """``modules``: import names (or :class:`Package`) to tick; default: those missing at start-up."""
        super().__init__(parent)
        self.setWindowTitle("Cloud probability — Python packages")
        self.installer_options = installer_options
        self.installer: PackageInstaller | None = None
        self.result_ok: bool | None = None
        wanted = [m if isinstance(m, Package) else deps.package(m)
                  for m in (modules if modules is not None else deps.startup_missing())]
        layout = QVBoxLayout(self)
        python = installer_options.get("python") or deps.qgis_python()
        base = installer_options.get("base") or deps.packages_base()
        intro = QLabel(
            f"Packages are installed with pip for the Python QGIS runs ({python or 'not found'}) into "
            f"{deps.site_dir(base)}, keeping the numpy QGIS has loaded and every compiled package its Python has.")
        intro.setWordWrap(True)
        layout.addWidget(intro)
        self.list = QListWidget()
        self._packages: dict[str, Package] = {}
        listed: dict[str, Package] = {}
        for p in [*wanted, *deps.PACKAGES.values()]:
            if p.pip:  # never GDAL-bundling wheels
                listed.setdefault(p.module, p)  # a package asked for with its own requirement keeps it
        absent = set(deps.missing(*listed))
        ticked = {p.module for p in wanted} & absent
        for module, package in listed.items():
            item = QListWidgetItem(f"{package.name} — {package.used_for or 'requested'}"
                                   f"{'' if module in absent else ' (installed)'}")
            item.setData(Qt.ItemDataRole.UserRole, module)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked if module in ticked else Qt.CheckState.Unchecked)
            self.list.addItem(item)
            self._packages[module] = package
        layout.addWidget(self.list)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        layout.addWidget(self.progress)
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMinimumSize(560, 220)
        layout.addWidget(self.log)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        self.buttons = QDialogButtonBox()
        self.install_button = self.buttons.addButton("Install", QDialogButtonBox.ButtonRole.ActionRole)
        self.cancel_button = self.buttons.addButton(QDialogButtonBox.StandardButton.Cancel)
        self.close_button = self.buttons.addButton(QDialogButtonBox.StandardButton.Close)
        self.install_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        self.close_button.clicked.connect(self.reject)
        self.cancel_button.setEnabled(False)
        layout.addWidget(self.buttons)

    def chosen(self) -> list[Package]:
        """The packages ticked in the list."""
        return [self._packages[self.list.item(i).data(Qt.ItemDataRole.UserRole)] for i in range(self.list.count())
                if self.list.item(i).checkState() == Qt.CheckState.Checked]

    def start(self) -> bool:
        """Runs pip for the ticked packages; the bar turns busy until it ends."""
        packages = self.chosen()
        if not packages:
            self.status.setText("Tick the packages to install.")
            return False
        self.result_ok = None
        self.installer = PackageInstaller(packages, parent=self, **self.installer_options)
        self.installer.output.connect(self.log.appendPlainText)
        self.installer.finished.connect(self._finished)
        self.progress.setRange(0, 0)  # busy: pip gives no overall percentage
        self.install_button.setEnabled(False)
        self.close_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.list.setEnabled(False)
        self.status.setText("Installing… (pip's log below)")
        return self.installer.start()

    def cancel(self) -> None:
        if self.installer is not None and self.installer.running():
            self.status.setText("Cancelling…")
            self.installer.cancel()
        else:
            self.reject()

    def _finished(self, ok: bool, message: str) -> None:
        self.result_ok = ok
        self.progress.setRange(0, 1)
        self.progress.setValue(1 if ok else 0)
        self.status.setText(message)
        self.install_button.setEnabled(True)
        self.close_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.list.setEnabled(True)
        if ok:
            modules = [p.module for p in self.installer.packages]
            self.installed.emit([m for m in modules if not deps.missing(m)])

    def reject(self) -> None:  # noqa: D102 - Escape/close while pip runs stops pip first
        if self.installer is not None and self.installer.running():
            self.installer.cancel()
            self.installer.process.waitForFinished(5000)
        super().reject()


def offer_install(message_bar, text: str, modules: list, parent=None, on_installed=None):
    """A warning on QGIS's message bar with an *Install…* button for the pip packages among ``modules``.

    Returns the message bar item (to remove it later). Packages that only the distribution can
    provide get the sentence and no button.
    """
    widget = message_bar.createMessage("Cloud probability", text)
    installable = [m for m in modules if deps.package(m).pip]
    if installable:
        button = QPushButton("Install…")
        widget.layout().addWidget(button)

        def show():
            dialog = InstallDialog(installable, parent)
            dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
            if on_installed is not None:
                dialog.installed.connect(on_installed)
            widget.dialog = dialog  # kept alive while shown
            dialog.show()

        button.clicked.connect(show)
        widget.install_button = button
    widget.setLevel(Qgis.MessageLevel.Warning)
    message_bar.pushItem(widget)
    return widget
