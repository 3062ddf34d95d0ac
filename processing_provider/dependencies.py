"""The Python packages the plugin imports lazily: which are missing, the sentence that says so,
and how to install them into the Python QGIS runs.

Checks never import a package (``importlib.util.find_spec`` only), so QGIS starts as fast with
the plugin as without it; a real import happens only just before a run (:func:`check_before_run`)
and after an install (:func:`import_problems`).

Where packages go: ``pip install --user`` with ``PYTHONUSERBASE`` set to a folder of the QGIS
profile (:func:`packages_base`), whose site-packages the plugin puts on ``sys.path`` where a user
site goes, before the system's site-packages, when it loads (:func:`activate`). That needs no root
and no virtual environment, leaves the user's own ``~/.local`` and every other Python program
alone, and keeps pip aware of what QGIS's Python already has (``--target`` would reinstall numpy
and the rest beside Debian's).

pip runs in QGIS's own interpreter (:func:`qgis_python`), never a ``python3`` found on PATH: the
embedded Python of the QGIS binary may take its ``sys.executable`` from PATH (a pyenv shim, another
Python), and the bootstrap refuses an interpreter of another version or installation.

A constraints file (:func:`pins`, :func:`constraints_text`) pins what the packages must live with:
the numpy QGIS has loaded, every compiled distribution QGIS's Python has (Debian's pandas, scipy,
rasterio, PyQt5… built for that numpy and the system's GDAL, GEOS and PROJ: pip must never bring a
second one), and the version ranges those compiled distributions themselves require. Pure-Python
distributions are not pinned: pip keeps the installed one when it satisfies the packages and puts a
newer one into the profile's folder when it does not (Debian 12's requests 2.28.1 against
pystac-client's requests >= 2.28.2). When a requirement cannot be met, :func:`explain_conflict`
says which one and what to do.

No ``qgis`` import at module level: the path logic is plain Python and testable as such.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

MENU = "Cloud probability"
INSTALL_ACTION = "Install Python packages…"
MENU_PATH = f"Plugins › {MENU} › {INSTALL_ACTION}"


@dataclass(frozen=True)
class Package:
    """One Python package the plugin imports lazily.

    ``module`` is the top-level import name, ``name`` the distribution name (PyPI), ``requirement``
    what the installer asks pip for, ``used_for`` the words shown to the user. ``pip`` False marks a
    package that must come from the distribution QGIS came from (its wheels bundle a second GDAL,
    GEOS or PROJ); ``system`` is its Debian/Ubuntu package. ``optional`` packages are needed only
    for one option (no warning at start-up).
    """

    module: str
    name: str
    requirement: str
    used_for: str
    pip: bool = True
    system: str = ""
    optional: bool = False


PACKAGES: dict[str, Package] = {p.module: p for p in (
    Package("pystac_client", "pystac-client", "pystac-client>=0.8", "searching STAC catalogues"),
    Package("exactextract", "exactextract", "exactextract>=0.2", "zonal statistics"),
    Package("urllib3", "urllib3", "urllib3>=1.26", "reading scenes over HTTP"),
    Package("s2cloudless", "s2cloudless", "s2cloudless>=1.7", "the s2cloudless cloud mask", optional=True),
    Package("distributed", "distributed", "distributed", "running on a Dask scheduler", optional=True),
    Package("rasterio", "rasterio", "", "reading and writing rasters", pip=False, system="python3-rasterio"),
    Package("scipy", "scipy", "", "masks and smoothing", pip=False, system="python3-scipy"),
    Package("shapely", "shapely", "", "areas and footprints", pip=False, system="python3-shapely"),
    Package("pyproj", "pyproj", "", "coordinate transformations", pip=False, system="python3-pyproj"),
    Package("geopandas", "geopandas", "", "zonal statistics", pip=False, system="python3-geopandas"),
)}


def package(module: str) -> Package:
    """The :class:`Package` of an import name (an unknown one is taken as a pip package of that name)."""
    return PACKAGES.get(module) or Package(module, module, module, "")


# ------------------------------------------------------------------ checks
def missing(*modules: str) -> list[str]:
    """The import names among ``modules`` that QGIS's Python cannot find (nothing is imported)."""
    absent = []
    for module in dict.fromkeys(modules):
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a finder that refuses it, or a half-imported module
            found = False
        if not found:
            absent.append(module)
    return absent


def import_problems(modules: Iterable[str]) -> dict[str, str]:
    """Import each module for real; ``{module: "ExceptionType: message"}`` for those that fail."""
    problems = {}
    for module in dict.fromkeys(modules):
        try:
            importlib.import_module(module)
        except Exception as exc:  # a broken install raises anything (ABI errors, missing DLLs)
            problems[module] = f"{type(exc).__name__}: {exc}"
    return problems


def join_words(words: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    words = list(words)
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def missing_sentence(what: str, modules: Sequence[str], python: Path | str | None = None,
                     headless: bool = True) -> str:
    """One sentence: what needs which packages, and how to install them.

    pip packages are offered through the plugin's menu (and, with ``headless``, for a QGIS without
    its window, pip for QGIS's own Python); distribution packages through the installer QGIS came from.
    """
    packages = [package(m) for m in modules]
    plural = "s" if len(packages) > 1 else ""
    named = [f"{p.name} ({p.used_for})" if p.used_for else p.name for p in packages]
    sentence = f"{what} needs the Python package{plural} {join_words(named)}, which QGIS's Python cannot import"
    ways = []
    by_pip = [p for p in packages if p.pip]
    if by_pip:
        way = f"install {join_words([p.name for p in by_pip])} with {MENU_PATH}"
        if headless:
            way += f" (without the QGIS window: {shell_command([p.requirement for p in by_pip], python)})"
        ways.append(way)
    by_system = [p for p in packages if not p.pip]
    if by_system:
        ways.append(f"install {join_words([p.system or p.name for p in by_system])} with the installer QGIS came from "
                    f"(apt, OSGeo4W Setup or conda), not with pip, whose wheels bring a second GDAL, GEOS or PROJ")
    return sentence + ": " + "; ".join(ways) + "."


def shell_command(requirements: Sequence[str], python: Path | str | None = None) -> str:
    """The pip command a shell user can run instead: QGIS's Python, the user site, the loaded numpy kept.

    Never a bare ``python3``: the one on PATH may be another Python than QGIS's. Without QGIS's
    interpreter the command says to run it with that Python.
    """
    python = python or qgis_python()
    words = [f'"{python}"' if python else "<the Python QGIS runs>", "-m", "pip", "install", "--user"]
    if _externally_managed():
        words.append("--break-system-packages")
    words += [f'"{r}"' for r in requirements]
    numpy = sys.modules.get("numpy")
    if numpy is not None:  # only when loaded: a check never imports numpy
        words.append(f'"numpy=={numpy.__version__}"')
    return " ".join(words)


def can_execute(what: str, *modules: str) -> tuple[bool, str]:
    """``(True, "")`` or ``(False, sentence)`` for ``QgsProcessingAlgorithm.canExecute`` (no import)."""
    absent = missing(*modules)
    return (not absent, missing_sentence(what, absent) if absent else "")


def check_before_run(what: str, modules: Sequence[str]) -> tuple[bool, str]:
    """Like :func:`can_execute`, then imports the packages that are there: a broken install
    (a wheel built for another numpy, a missing DLL) is named before any work starts."""
    ok, message = can_execute(what, *modules)
    if not ok:
        return ok, message
    problems = import_problems(m for m in modules if m in PACKAGES)
    if not problems:
        return True, ""
    names = join_words([package(m).name for m in problems])
    details = "; ".join(f"{package(m).name}: {error}" for m, error in problems.items())
    return False, (f"{what} needs {names}, which is installed but does not import ({details}); "
                   f"reinstall it with {MENU_PATH} and restart QGIS.")


def startup_missing() -> list[str]:
    """The non-optional packages QGIS's Python cannot find: the plugin warns about them at start-up."""
    return missing(*[m for m, p in PACKAGES.items() if not p.optional])


# ------------------------------------------------------------------ the interpreter
_PYTHON_NAME = re.compile(r"^python(\d+(\.\d+)?)?(\.exe)?$", re.IGNORECASE)


def python_candidates(executable: str | None, exec_prefix: str, platform: str, version: Sequence[int],
                      environ: Mapping[str, str]) -> list[Path]:
    """Where the interpreter of the Python QGIS runs can be, most likely first.

    Inside QGIS ``sys.executable`` is the QGIS binary on Windows and macOS (``qgis-bin.exe``,
    ``QGIS.app/Contents/MacOS/QGIS``) and either ``python3`` or ``qgis`` on Linux; running that
    with ``-m pip`` would start another QGIS. ``sys.exec_prefix`` is the embedded Python's home:
    OSGeo4W and the standalone installer put it at ``<root>/apps/Python3xx`` with
    ``<root>/bin/python3.exe`` beside QGIS; the macOS bundle ships ``Contents/MacOS/bin/python3``.
    """
    short = f"{version[0]}.{version[1]}"
    prefix = Path(exec_prefix)
    exe = Path(executable) if executable else None
    candidates: list[Path] = []
    if exe is not None and _PYTHON_NAME.match(exe.name) and _same_folder(exe.parent, _home_folders(prefix, exe, platform,
                                                                                                    environ)):
        candidates.append(exe)
    if platform.startswith("win"):
        roots = []
        if environ.get("OSGEO4W_ROOT"):
            roots.append(Path(environ["OSGEO4W_ROOT"]))
        if prefix.parent.name.lower() == "apps":
            roots.append(prefix.parent.parent)
        if exe is not None and exe.parent.name.lower() == "bin":
            roots.append(exe.parent.parent)
        candidates += [root / "bin" / "python3.exe" for root in roots]
        candidates += [prefix / "python3.exe", prefix / "python.exe"]
    else:
        if platform == "darwin" and exe is not None:
            contents = next((p for p in exe.parents if p.name == "Contents"), None)
            if contents is not None:
                candidates += [contents / "MacOS" / "bin" / f"python{short}", contents / "MacOS" / "bin" / "python3"]
        candidates += [prefix / "bin" / f"python{short}", prefix / "bin" / "python3"]
    return list(dict.fromkeys(candidates))


def _home_folders(prefix: Path, exe: Path | None, platform: str, environ: Mapping[str, str]) -> list[Path]:
    """The folders where this installation's own interpreter lies: ``sys.executable`` counts only there.

    The embedded Python of the QGIS binary on Linux sets ``sys.executable`` from the first
    ``python3`` on PATH, which can be a pyenv shim or another installation: pip run with it would
    install for that Python, not for QGIS's.
    """
    if platform.startswith("win"):
        roots = [Path(environ["OSGEO4W_ROOT"])] if environ.get("OSGEO4W_ROOT") else []
        if prefix.parent.name.lower() == "apps":
            roots.append(prefix.parent.parent)
        return [prefix, prefix / "Scripts", *[root / "bin" for root in roots]]
    folders = [prefix / "bin"]
    if platform == "darwin" and exe is not None:
        contents = next((p for p in exe.parents if p.name == "Contents"), None)
        if contents is not None:
            folders.append(contents / "MacOS" / "bin")
    return folders


def _same_folder(folder: Path, homes: Sequence[Path]) -> bool:
    """``folder`` is one of ``homes`` (symbolic links resolved: /bin is /usr/bin on Debian)."""
    def key(p: Path) -> str:
        try:
            return os.path.normcase(str(p.resolve()))
        except OSError:
            return os.path.normcase(os.path.abspath(p))

    return key(folder) in {key(h) for h in homes}


def qgis_python(executable: str | None = None, exec_prefix: str | None = None, platform: str | None = None,
                version: Sequence[int] | None = None, environ: Mapping[str, str] | None = None) -> Path | None:
    """The interpreter of the Python QGIS runs (this process's Python), or None if none is found.

    Arguments default to this process's ``sys`` values; they exist so the search can be checked
    against the layouts of other platforms.
    """
    executable = sys.executable if executable is None else executable
    exec_prefix = sys.exec_prefix if exec_prefix is None else exec_prefix
    platform = sys.platform if platform is None else platform
    version = sys.version_info[:2] if version is None else version
    environ = os.environ if environ is None else environ
    for candidate in python_candidates(executable, exec_prefix, platform, version, environ):
        if candidate.is_file() and (platform.startswith("win") or os.access(candidate, os.X_OK)):
            return candidate
    return None


# ------------------------------------------------------------------ where packages go
def packages_base(profile: str | Path | None = None) -> Path:
    """The folder of the QGIS profile that pip's ``--user`` installs go to (``PYTHONUSERBASE``)."""
    if profile is None:
        from qgis.core import QgsApplication

        profile = QgsApplication.qgisSettingsDirPath()
    return Path(profile) / "python" / "cloud_probability_packages"


def _user_scheme() -> str:
    try:
        return sysconfig.get_preferred_scheme("user")
    except AttributeError:  # Python < 3.10 (QGIS 3.22–3.28 on Windows)
        if sys.platform == "darwin" and getattr(sys, "_framework", ""):
            return "osx_framework_user"
        return f"{os.name}_user"


def site_dir(base: str | Path) -> Path:
    """The site-packages of ``base`` as pip's user scheme lays it out for this Python (version-specific)."""
    return Path(sysconfig.get_path("purelib", _user_scheme(), vars={"userbase": str(base)}))


def activate(base: str | Path | None = None) -> bool:
    """Put ``base``'s site-packages on ``sys.path`` (with its .pth files) if it exists; True if added.

    It goes where Python puts a user site, before the first site-packages: the order pip assumed
    when it installed there with ``--user``. A pure-Python package pip put there because the
    system's was too old (requests) then wins over it, and nothing compiled is ever there to win
    (the constraints kept every compiled distribution QGIS's Python has).
    """
    import site

    folder = site_dir(packages_base() if base is None else base)
    importlib.invalidate_caches()
    if not folder.is_dir() or str(folder) in sys.path:
        return False
    before = list(sys.path)
    site.addsitedir(str(folder))  # appends the folder and what its .pth files name
    added = [p for p in sys.path[len(before):] if p not in before]
    at = _first_site_packages(before)
    if added and at is not None:
        sys.path[:] = before[:at] + added + before[at:]
    importlib.invalidate_caches()
    return True


def _first_site_packages(path: Sequence[str]) -> int | None:
    """Index in ``path`` of the first site-packages folder (the system's, a virtual environment's, a user's)."""
    import site

    sites = list(getattr(site, "getsitepackages", lambda: [])())
    user = getattr(site, "getusersitepackages", lambda: None)()
    if user:
        sites.append(user)
    keys = {os.path.normcase(os.path.abspath(p)) for p in sites}
    for index, entry in enumerate(path):
        if entry and (os.path.normcase(os.path.abspath(entry)) in keys
                      or Path(entry).name in ("site-packages", "dist-packages")):
            return index
    return None


# ------------------------------------------------------------------ the pip run
# A version as PEP 440 defines it (Appendix B's pattern): anything else would make pip reject
# the whole constraints file, so such distributions are left unpinned.
_PEP440 = re.compile(r"""^\s*v?(?:(?:[0-9]+!)?[0-9]+(?:\.[0-9]+)*(?:[-_.]?(?:a|b|c|rc|alpha|beta|pre|preview)
    [-_.]?[0-9]*)?(?:-[0-9]+|[-_.]?(?:post|rev|r)[-_.]?[0-9]*)?(?:[-_.]?dev[-_.]?[0-9]*)?)\s*$""",
                     re.VERBOSE | re.IGNORECASE)
_NAME = re.compile(r"^([A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])$", re.IGNORECASE)


def canonical(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


@dataclass(frozen=True)
class Pin:
    """One line of the constraints file: ``name`` (PEP 503), ``spec`` (``==1.24.2``, ``<13,>=12.11``),
    ``reason``, the words that say why the installer keeps it (shown when pip cannot meet it), and
    ``owner``, the distribution of QGIS's Python that a user would update to lift it."""

    name: str
    spec: str
    reason: str
    owner: str

    @property
    def line(self) -> str:
        return f"{self.name}{self.spec}"


# a Requires-Dist entry without marker: "name (>=1, <2)" (older metadata) or "name>=1,<2"
_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*\(?\s*([<>=!~][^;()]*?)\s*\)?\s*$")


def _extension_suffixes() -> tuple[str, ...]:
    import importlib.machinery

    return tuple(importlib.machinery.EXTENSION_SUFFIXES) + (".pyd", ".so")


def compiled(dist) -> bool | None:
    """Whether an installed distribution ships extension modules: True, False, or None (cannot tell).

    From its file list (RECORD) where it has one, else from the folders of its top-level modules
    (top_level.txt, or its own name): Debian's egg-info has no file list.
    """
    suffixes = _extension_suffixes()
    files = dist.files
    if files:
        return any(str(f).endswith(suffixes) for f in files)
    try:
        location = Path(str(dist.locate_file("")))
    except Exception:  # a distribution type without files on disk
        return None
    tops = (dist.read_text("top_level.txt") or "").split() or [(dist.metadata.get("Name") or "").replace("-", "_")]
    found = False
    for top in filter(None, tops):
        folder = location / top
        if folder.is_dir():
            found = True
            if any(str(p).endswith(suffixes) for p in folder.rglob("*")):
                return True
        for module in location.glob(f"{top}.*"):
            found = True
            if str(module).endswith(suffixes):
                return True
    return False if found else None


def pins(base: str | Path | None = None, installing: Iterable[str] = ()) -> list[Pin]:
    """What the packages must live with in QGIS's Python, except what is in ``base`` or being installed.

    * the numpy loaded (``numpy.__version__``): everything compiled in QGIS's Python is built for it;
    * every compiled distribution QGIS's Python sees, at its version (pip must not bring a second
      one: a wheel of rasterio, shapely or pyproj bundles another GDAL, GEOS or PROJ, and one of
      PyQt5 another Qt), and one whose files say nothing either way, to be safe;
    * the version ranges those compiled distributions require themselves (scipy's numpy < 1.27,
      PyQt5's PyQt5-sip < 13…), so pip never upgrades what they import past what they accept.

    Pure-Python distributions are not pinned: pip keeps the installed one when it satisfies the
    requirements and installs a newer one into ``base`` when it does not.
    """
    import importlib.metadata

    import numpy

    skip = {canonical(n) for n in installing}
    found = [Pin("numpy", f"=={numpy.__version__}",
                 f"QGIS has loaded numpy {numpy.__version__}, which its compiled packages are built for", "numpy")]
    seen = {"numpy"} | skip
    folder = Path(base) if base is not None else None
    kept = []
    for dist in importlib.metadata.distributions():
        name = dist.metadata.get("Name") or ""
        key = canonical(name)
        if not name or key in seen or not _NAME.match(name):
            continue
        seen.add(key)  # the first one on sys.path is the one that imports
        try:
            location = Path(str(dist.locate_file("")))
        except Exception:  # a distribution type without files on disk
            location = None
        if folder is not None and location is not None and _inside(location, folder):
            continue
        version = (dist.version or "").strip()
        if not _PEP440.match(version):
            continue
        is_compiled = compiled(dist)
        if is_compiled is False:
            continue
        what = "compiled for it" if is_compiled else "which may be compiled for it"
        found.append(Pin(key, f"=={version}", f"QGIS's Python has {name} {version}, {what}", name))
        kept.append((name, version, dist))
    for name, version, dist in kept:
        for requirement in dist.requires or ():
            if ";" in requirement:
                continue  # extras and markers: not what it needs to import here
            match = _REQUIREMENT.match(requirement)
            if not match or canonical(match.group(1)) in skip:
                continue
            spec = re.sub(r"\s+", "", match.group(2))
            found.append(Pin(canonical(match.group(1)), spec,
                             f"{name} {version} in QGIS's Python needs {match.group(1)}{spec}", name))
    return found


def constraints_text(base: str | Path | None = None, installing: Iterable[str] = (),
                     found: Sequence[Pin] | None = None) -> str:
    """The pip constraints file of :func:`pins` (or of ``found``), each line saying why."""
    lines = ["# Written by the Cloud probability plugin: what the packages must live with in QGIS's Python.",
             "# Pure-Python packages are not pinned: pip may put a newer one beside QGIS's."]
    for pin in (pins(base, installing) if found is None else found):
        lines.append(f"{pin.line}  # {pin.reason}")
    return "\n".join(lines) + "\n"


_CAUSE = re.compile(r"^\s*(?P<who>\S+) (?P<version>\S+) depends on (?P<requirement>.+?)\s*$")
_CONSTRAINT = re.compile(r"^\s*The user requested \(constraint\) (?P<pin>.+?)\s*$")


def _requirement_name(requirement: str) -> str:
    return canonical(re.split(r"[\s<>=!~;\[(]", requirement.strip(), maxsplit=1)[0])


def explain_conflict(log: str, found: Sequence[Pin], requested: Sequence[str] = ()) -> str | None:
    """One sentence for pip's ResolutionImpossible in ``log``: which requirement cannot be met, by
    what QGIS's Python has, and what to do; None if pip did not say a constraint was in the way."""
    lines = log.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if "conflict is caused by" in line)
    except StopIteration:
        return None
    causes, constraints = [], []
    for line in lines[start + 1:]:
        if not line.strip():
            if causes or constraints:
                break
            continue
        constraint = _CONSTRAINT.match(line)
        cause = _CAUSE.match(line)
        if constraint:
            constraints.append(constraint.group("pin"))
        elif cause:
            causes.append(cause.groupdict())
    wanted = {_requirement_name(r) for r in requested}
    for text in constraints:
        name_part = re.match(r"^\s*([A-Za-z0-9._-]+)(.*)$", text)
        if not name_part:
            continue
        name, spec = canonical(name_part.group(1)), re.sub(r"\s+", "", name_part.group(2))
        pin = next((p for p in found if p.name == name and p.spec == spec), None) \
            or next((p for p in found if p.name == name), None)
        need = next((c for c in causes if _requirement_name(c["requirement"]) == name), None)
        if pin is None or need is None:
            continue
        who = need["who"]
        if canonical(who) in wanted or not requested:
            older = f"ask for an older {who} that works with it"
        else:
            older = f"ask for an older {join_words(list(requested))} whose {who} works with it"
        return (f"{who} {need['version']} needs {need['requirement']}, but {pin.reason}, and the installer leaves "
                f"that as it is: {older}, or update {pin.owner} with the installer QGIS came from (apt, OSGeo4W "
                f"Setup or conda) and restart QGIS")
    return None


# Runs in the interpreter found by qgis_python: refuses another Python version, explains a
# missing pip, then hands the remaining arguments to pip.
BOOTSTRAP = """\
import importlib.util, os, runpy, sys
want = sys.argv.pop(1)
want_home = sys.argv.pop(1)
have = '%d.%d' % sys.version_info[:2]
print('Python %s at %s (prefix %s)' % (sys.version.split()[0], sys.executable, sys.prefix), flush=True)
if have != want:
    sys.exit('This interpreter is Python %s but QGIS runs Python %s: packages built for it would not import.'
             % (have, want))
home = os.path.normcase(os.path.realpath(sys.base_prefix))
if home != want_home:
    sys.exit('This interpreter belongs to the Python installed in %s, but QGIS runs the one in %s: packages '
             'installed for it would not be the ones QGIS imports.' % (home, want_home))
if importlib.util.find_spec('pip') is None:
    sys.exit("QGIS's Python has no pip: install it first (Debian/Ubuntu: sudo apt install python3-pip).")
sys.argv[0] = 'pip'
runpy.run_module('pip', run_name='__main__', alter_sys=True)
"""


def pip_arguments(requirements: Sequence[str], constraints: Path, extra: Sequence[str] = ()) -> list[str]:
    """The interpreter's arguments for ``pip install --user`` of ``requirements`` under ``constraints``."""
    return ["-c", BOOTSTRAP, f"{sys.version_info[0]}.{sys.version_info[1]}",
            os.path.normcase(os.path.realpath(sys.base_prefix)),
            "install", "--user", "--prefer-binary", "--no-warn-script-location", "--disable-pip-version-check",
            "--no-input", "--no-color", "--progress-bar", "off", "-c", str(constraints), *extra, *requirements]


def _externally_managed() -> bool:
    return (Path(sysconfig.get_path("stdlib")) / "EXTERNALLY-MANAGED").is_file()


def pip_environment(base: str | Path) -> dict[str, str | None]:
    """Variables to set (None: to remove) for the pip run: ``--user`` means ``base``.

    Debian 12 and other PEP 668 systems refuse ``--user`` installs unless told otherwise; the
    check guards the system's own folders, which an install into ``base`` does not touch.
    """
    env: dict[str, str | None] = {"PYTHONUSERBASE": str(base), "PYTHONNOUSERSITE": None,
                                  "PYTHONIOENCODING": "utf-8", "PYTHONUNBUFFERED": "1"}
    if _externally_managed():
        env["PIP_BREAK_SYSTEM_PACKAGES"] = "1"
    return env
