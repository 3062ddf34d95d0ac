"""The wheel ``cloud_probability_core`` (``make wheel``); its configuration is in pyproject.toml.

Two things pyproject.toml cannot say: the version is the plugin's own, read from metadata.txt
(one source), and of the plugin folder's top-level modules only ``__init__.py`` goes in (it
imports nothing from QGIS); plugin.py, which imports QGIS, stays out. Build files go under
.build/wheel, never into the plugin folder.
"""
import configparser
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
BUILD = HERE / ".build" / "wheel"
TOP_LEVEL_MODULES = {"__init__"}  # of the package cloud_probability (the plugin folder itself)


def plugin_version() -> str:
    """``version`` of metadata.txt's ``[general]`` section."""
    meta = configparser.ConfigParser(interpolation=None)
    if not meta.read(HERE / "metadata.txt", encoding="utf-8"):
        raise SystemExit("metadata.txt is missing: build the wheel from the plugin folder")
    return meta["general"]["version"]


class CoreOnly(build_py):
    """build_py leaving out the plugin folder's QGIS modules."""

    def find_package_modules(self, package, package_dir):
        modules = super().find_package_modules(package, package_dir)
        if package == "cloud_probability":
            modules = [m for m in modules if m[1] in TOP_LEVEL_MODULES]
        return modules


# setuptools leaves build/lib in place between builds: a module removed from core/ would stay in
# every later wheel
shutil.rmtree(BUILD / "build", ignore_errors=True)
BUILD.mkdir(parents=True, exist_ok=True)
setup(
    version=plugin_version(),
    cmdclass={"build_py": CoreOnly},
    options={"build": {"build_base": str(BUILD / "build")}, "egg_info": {"egg_base": str(BUILD)}},
)
