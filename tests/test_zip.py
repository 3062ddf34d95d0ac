"""`make zip` checked like a release (issue 17, items 4 and 6).

The zip is unpacked into a fresh QGIS profile in a temporary folder, the way *Plugins → Install
from ZIP* does, and a headless QGIS (Debian's ``qgis_process.bin``) enables it and lists its
algorithms. That QGIS sees none of this checkout's pip packages: like a user's QGIS right after
the install, before pystac-client or exactextract are there. The metadata and the archive are
checked with the QGIS plugin repository's own upload rules (transcribed below).
"""
from __future__ import annotations

import configparser
import io
import os
import re
import shutil
import subprocess
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parent.parent
QGIS_PROCESS = Path(os.environ.get("QGIS_PROCESS_BIN", "/usr/bin/qgis_process.bin"))
TOP = "cloud_probability"

# The provider's algorithm ids, as /work/shared/DESIGN.md lists them ("Processing provider
# cloudprob"): part of the interface, so written out here rather than taken from the code.
DESIGN_IDS = {
    "cloudprob:searchscenes", "cloudprob:screenscenes", "cloudprob:cloudmask", "cloudprob:cloudfrequency",
    "cloudprob:smoothprobability", "cloudprob:zonalstatistics", "cloudprob:clearcomposite",
    "cloudprob:annualcloudprobability",
}

# Development only: never in the zip.
DEV_FOLDERS = {"tests", "benchmarks", "scripts", ".ci", "docs", ".build", "dist", "demo_out", "bench_out",
               "__pycache__", ".git", "__MACOSX", ".qgis-settings"}
DEV_FILES = {"Makefile", "requirements.txt", "constraints.txt", "pyproject.toml", ".flake8", ".gitignore",
             ".gitattributes", ".git"}


@pytest.fixture(scope="module")
def plugin_zip(tmp_path_factory) -> Path:
    """``make zip``'s archive, copied out of dist/ so that the checks read what it wrote then."""
    done = subprocess.run(["make", "-s", "zip"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    made = ROOT / "dist" / "cloud_probability.zip"
    assert str(made) in done.stdout
    copy = tmp_path_factory.mktemp("zip") / made.name
    shutil.copy2(made, copy)
    return copy


def gpl2_revision_neutral(text: str) -> str:
    """The GPL v2 text with what the FSF changed in its later revision of it written the later way:
    its postal address (now <https://fsf.org/>), the notice's 'write to the Free Software Foundation'
    (now a URL) and the sample signature's name."""
    text = re.sub(r"write to the Free Software Foundation, Inc\.,\s+51 Franklin Street, Fifth Floor, Boston, "
                  r"MA 02110-1301 USA\.", "see <https://www.gnu.org/licenses/>.", text)
    text = text.replace("51 Franklin Street, Fifth Floor, Boston, MA 02110-1301 USA", "<https://fsf.org/>")
    return text.replace("Ty Coon", "Moe Ghoul")


def test_the_zip_holds_what_a_user_needs_and_no_development_files(plugin_zip):
    with zipfile.ZipFile(plugin_zip) as zf:
        names = [n for n in zf.namelist() if not n.endswith("/")]
        assert {n.split("/")[0] for n in names} == {TOP}
        inside = {n[len(TOP) + 1:] for n in names}
        for name in inside:
            parts = name.split("/")
            assert not DEV_FOLDERS & set(parts[:-1]), name
            assert parts[-1] not in DEV_FILES and not parts[-1].startswith("requirements"), name
            assert not name.endswith((".pyc", ".pyo")), name
        for needed in ("__init__.py", "metadata.txt", "LICENSE", "plugin.py", "resources.qrc", "icons/cloudprob.svg",
                       "processing_provider/provider.py",
                       "processing_provider/models/annualcloudprobability.model3", "ui/dock.py"):
            assert needed in inside, needed
        sources = {n: zf.read(f"{TOP}/{n}").decode() for n in inside if n.endswith(".py")}
        licence = zf.read(f"{TOP}/LICENSE").decode()
    # every style the code loads by name ships with it
    for name, text in sources.items():
        for qml in re.findall(r"[\"']([\w-]+\.qml)[\"']", text):
            assert f"ui/styles/{qml}" in inside, f"{name} loads {qml}, which is not in the zip"
        compile(text, name, "exec")  # and every module is valid Python
    # the demo's sample-archive generator is no part of the plugin: nothing shipped imports it
    users = [n for n, text in sources.items()
             if re.search(r"^\s*(from|import)\s.*sample_archive", text, re.M) and not n.endswith("sample_archive.py")]
    assert not users, users
    # the licence the metadata names, in full (Debian keeps the FSF's text here; the FSF's later
    # revision of the same GPL v2, in Debian 13 on, differs only in its address, a URL and a name)
    gpl2 = Path("/usr/share/common-licenses/GPL-2")
    if gpl2.is_file():
        assert gpl2_revision_neutral(licence) == gpl2_revision_neutral(gpl2.read_text())
    assert "GNU GENERAL PUBLIC LICENSE" in licence and "Version 2, June 1991" in licence
    assert "END OF TERMS AND CONDITIONS" in licence  # the whole text, not a notice


# The QGIS plugin repository's upload checks, transcribed from qgis/QGIS-Django
# qgis-app/plugins/validator.py (validator(), _check_required_metadata, _check_url_link): the
# mandatory metadata, the archive's layout, LICENSE at the top. Its check that each URL answers
# is left out (no network here).
REQUIRED_METADATA = ("name", "description", "version", "qgisMinimumVersion", "author", "email", "about",
                     "tracker", "repository")
MAX_UPLOAD = 25_000_000
PLACEHOLDER_URLS = {"tracker": "http://bugs", "repository": "http://repo", "homepage": "http://homepage"}


def _version(text: str) -> tuple[int, ...]:
    assert re.fullmatch(r"\d+\.\d+(\.\d+)?", text), text
    return tuple(int(v) for v in text.split("."))


def test_the_zip_passes_the_plugin_repository_checks(plugin_zip):
    assert plugin_zip.stat().st_size <= MAX_UPLOAD
    with zipfile.ZipFile(plugin_zip) as zf:
        assert zf.testzip() is None
        names = zf.namelist()
        for name in names:
            assert ".." not in name and not name.startswith("/"), name
            assert ".pyc" not in name, name
            assert not {"__MACOSX", ".git", "__pycache__"} & set(name.split("/")), name
        package = names[0][: names[0].index("/")]
        assert re.fullmatch(r"[A-Za-z][A-Za-z0-9-_]+", package)
        assert f"{package}/__init__.py" in names and f"{package}/metadata.txt" in names
        assert f"{package}/LICENSE" in names
        parser = configparser.ConfigParser()
        parser.optionxform = str  # keys are case-sensitive, as the repository reads them
        parser.read_file(io.StringIO(zf.read(f"{package}/metadata.txt").decode("utf8")))
        meta = dict(parser.items("general"))
        for key in REQUIRED_METADATA:
            assert meta.get(key, "").strip(), f"metadata.txt has no {key}"
        assert "/" not in meta["author"]
        for key, placeholder in PLACEHOLDER_URLS.items():
            url = meta.get(key, "").strip()
            parsed = urlparse(url)
            assert url != placeholder and parsed.scheme in ("http", "https") and parsed.netloc, (key, url)
        assert f"{package}/{meta['icon'].removeprefix('./')}" in names, meta["icon"]
    for flag in ("experimental", "deprecated", "server"):
        assert meta.get(flag, "False").lower() in ("true", "false"), flag
    assert meta["hasProcessingProvider"] == "yes"
    assert re.fullmatch(r"\d+\.\d+\.\d+", meta["version"]), meta["version"]
    # QGIS 3.22 (tested here) through QGIS 4: the plugin repository lists a plugin for QGIS 4 only
    # when qgisMaximumVersion is 4.0 or above; "99" is the highest minor version QGIS allows
    low, high = _version(meta["qgisMinimumVersion"]), _version(meta["qgisMaximumVersion"])
    assert low <= (3, 22) and (4, 0) <= high and high[1] <= 99 and low <= high
    assert meta["license"] == "GPL-2.0-or-later"


def _qgis_env(config: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "QGIS_PLUGINPATH", "PYTHONHOME")}
    runtime = config.parent / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env.update(QT_QPA_PLATFORM="offscreen", QGIS_CUSTOM_CONFIG_PATH=str(config), XDG_RUNTIME_DIR=str(runtime))
    return env


def _qgis_process(env, *args, timeout=180) -> subprocess.CompletedProcess:
    return subprocess.run([str(QGIS_PROCESS), *args], env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


MARKUP = re.compile(r"</?(html|body|p|br|b|i|h\d|ul|li|a)\b[^>]*>|\*\w[^*\n]*\w\*", re.I)


def test_the_zip_installs_into_a_fresh_profile_and_lists_its_algorithms(plugin_zip, tmp_path):
    import json

    if not QGIS_PROCESS.exists():
        pytest.fail(f"{QGIS_PROCESS} is missing: install Debian's qgis (make test does)")
    config = tmp_path / "config"
    plugins = config / "profiles" / "default" / "python" / "plugins"
    plugins.mkdir(parents=True)
    with zipfile.ZipFile(plugin_zip) as zf:
        zf.extractall(plugins)
    env = _qgis_env(config)
    enabled = _qgis_process(env, "plugins", "enable", TOP)
    assert enabled.returncode == 0, enabled.stdout + enabled.stderr
    listed = _qgis_process(env, "--json", "list")
    assert listed.returncode == 0, listed.stderr
    provider = json.loads(listed.stdout)["providers"]["cloudprob"]
    algorithms = provider["algorithms"]
    assert set(algorithms) == DESIGN_IDS
    assert provider["name"] == "Cloud probability (Sentinel-2)"
    for alg_id, alg in algorithms.items():
        assert alg["name"] and alg["name"] != alg_id.split(":")[1], alg_id  # listed by name, not by id
    assert algorithms["cloudprob:annualcloudprobability"]["group"] == algorithms["cloudprob:zonalstatistics"]["group"]
    # the plugin came from this profile and nowhere else
    listed_plugins = _qgis_process(env, "plugins")
    assert re.search(rf"^\*\s*{TOP}\s*$", listed_plugins.stdout, re.M), listed_plugins.stdout

    # `qgis_process help` prints each algorithm's help as plain text (two at a time: each start takes seconds)
    def help_of(alg_id):
        return alg_id, _qgis_process(env, "help", alg_id)

    with ThreadPoolExecutor(max_workers=2) as pool:
        for alg_id, done in pool.map(help_of, sorted(DESIGN_IDS)):
            assert done.returncode == 0, done.stderr
            description = done.stdout.split("Description\n----------------\n", 1)[1].split("\n----------------")[0]
            assert len(description.strip()) > 200, (alg_id, description)
            assert not MARKUP.search(description), (alg_id, MARKUP.search(description).group(0))
