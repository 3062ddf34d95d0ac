"""Shared fixtures: the plugin importable as ``cloud_probability``, the sample archive, and
real servers on loopback (nginx for COGs with Range support, ``rustac serve`` for STAC).

QGIS itself is started by pytest-qgis (headless); core tests do not touch it.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / ".build"
REALDATA = ROOT / "tests" / "data"  # vendored: provenance and licences in tests/data/README.md

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


sys.path.insert(0, str(ROOT / "scripts"))
from devpaths import ensure_plugin_importable  # noqa: E402

ensure_plugin_importable(ROOT / "tests")


@pytest.fixture(scope="session")
def realdata() -> Path:
    """``tests/data``: the real Sentinel-2 STAC items and rasters the tests use, vendored with
    their provenance and licences (tests/data/README.md)."""
    return REALDATA


@pytest.fixture(scope="session")
def sample_archive() -> Path:
    """The small sample archive, generated once and reused while its spec is unchanged."""
    from cloud_probability.sampledata.sample_archive import SampleSpec, generate

    return generate(BUILD / "sample-small", SampleSpec.small())


@pytest.fixture(scope="session")
def sample_servers(sample_archive, tmp_path_factory):
    """nginx over the archive's COGs and rustac over its items, stopped at the end."""
    import servers

    with servers.SampleServers(sample_archive, tmp_path_factory.mktemp("servers")) as running:
        yield running


_PROVIDERS: list = []  # Processing keeps raw pointers: a provider's Python object must outlive it


def ensure_provider():
    """The ``cloudprob`` provider in the Processing registry, registered anew if a test unloaded it."""
    from qgis.core import QgsApplication

    from cloud_probability.processing_provider.provider import CloudProbabilityProvider

    registry = QgsApplication.processingRegistry()
    existing = registry.providerById("cloudprob")
    if existing is not None:
        return existing
    instance = CloudProbabilityProvider()
    _PROVIDERS.append(instance)
    assert registry.addProvider(instance)
    return instance


@pytest.fixture()
def provider(qgis_processing):
    """The ``cloudprob`` provider registered in the session's Processing registry."""
    return ensure_provider()


@pytest.fixture(scope="session")
def eolearn_servers(realdata, tmp_path_factory):
    """The 68 eo-learn dates (CLM, CLP, 1 − CLP as COGs with STAC items), served for real."""
    import realdata_archives
    import servers

    archive = realdata_archives.write_eolearn_archive(BUILD / "realdata-eolearn", realdata)
    with servers.SampleServers(archive, tmp_path_factory.mktemp("eolearn-servers")) as running:
        yield running


@pytest.fixture(scope="session")
def sen2r_servers(realdata, tmp_path_factory):
    """The two real SCL crops over Lake Barbellino, served for real."""
    import realdata_archives
    import servers

    archive = realdata_archives.write_sen2r_archive(BUILD / "realdata-sen2r", realdata)
    with servers.SampleServers(archive, tmp_path_factory.mktemp("sen2r-servers")) as running:
        yield running


@pytest.fixture(scope="session")
def l1c_servers(realdata, tmp_path_factory):
    """The five real 13-band L1C reference scenes (two processing baselines), served for real."""
    import realdata_archives
    import servers

    archive = realdata_archives.write_l1c_reference_archive(BUILD / "realdata-l1c", realdata)
    with servers.SampleServers(archive, tmp_path_factory.mktemp("l1c-servers")) as running:
        yield running


def served_scenes(running):
    """The Scenes of a served archive, as a STAC search would return them."""
    import json

    from cloud_probability.core.stac import normalise_item

    items = json.loads((running.workdir / "served_items.json").read_text())["features"]
    return [normalise_item(i) for i in items]


def self_signed_certificate(folder: Path):
    """A self-signed certificate for 127.0.0.1 made by openssl in ``folder``: (certificate file,
    server SSL context), for the loopback TLS servers of the tests."""
    import shutil
    import ssl
    import subprocess

    openssl = shutil.which("openssl")
    assert openssl, "openssl is installed by `make test` (Makefile APT_PACKAGES)"
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    return cert, tls


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """The wheel as `make wheel` builds it (pip, no build isolation), into a scratch folder."""
    import subprocess

    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--no-deps",
                           "--no-build-isolation", "-w", str(out), str(ROOT)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    built = list(out.glob("*.whl"))
    assert len(built) == 1, built
    return built[0]


@pytest.fixture(scope="session")
def wheel_site(wheel, tmp_path_factory) -> Path:
    """A folder holding only the installed wheel (``pip install --target``, no dependencies): on a
    process's PYTHONPATH, the one place it finds ``cloud_probability``, as on a cluster node."""
    import subprocess

    target = tmp_path_factory.mktemp("wheel-site")
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
                           "--target", str(target), str(wheel)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return target
