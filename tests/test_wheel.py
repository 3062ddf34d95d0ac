"""The wheel for Dask workers (`make wheel`): core and nothing of QGIS, and a real worker process
that can import cloud_probability only from that wheel runs a stage with the in-process run's bytes.
"""
from __future__ import annotations

import ast
import configparser
import json
import os
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from conftest import ROOT, served_scenes

from cloud_probability.core.frequency import cloud_frequency, grid_for_area
from cloud_probability.core.masks import PRESETS

pytest.importorskip("distributed")

QGIS_SIDE = ("qgis", "PyQt5", "PyQt6", "sip", "processing")


def _imports(source: str) -> set[str]:
    """Top-level names of the absolute imports in ``source``, at any depth (lazy imports too)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_wheel_holds_core_and_nothing_of_qgis(wheel):
    meta = configparser.ConfigParser(interpolation=None)
    meta.read(ROOT / "metadata.txt", encoding="utf-8")
    version = meta["general"]["version"]
    assert wheel.name == f"cloud_probability_core-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        modules = {n: zf.read(n).decode() for n in names if n.endswith(".py")}
        metadata = Parser().parsestr(zf.read(f"cloud_probability_core-{version}.dist-info/METADATA").decode())
    print("\n".join(names))
    core = {f"cloud_probability/core/{p.name}" for p in (ROOT / "core").glob("*.py")}
    assert set(modules) == core | {"cloud_probability/__init__.py"}
    assert not [n for n in names if not (n in modules or n.startswith(f"cloud_probability_core-{version}.dist-info/"))]
    offenders = {n: sorted(_imports(src) & set(QGIS_SIDE)) for n, src in modules.items()}
    assert not {n: v for n, v in offenders.items() if v}
    assert metadata["Version"] == version

    # every third-party package core imports is a dependency (or an extra), as this Python maps
    # import names to distributions
    from importlib.metadata import packages_distributions

    dists = packages_distributions()
    required = {r.split(";")[0].split("(")[0].split("=")[0].strip().lower() for r in metadata.get_all("Requires-Dist")}
    imported = set().union(*(_imports(src) for src in modules.values())) - set(sys.stdlib_module_names)
    imported -= {"cloud_probability", "__future__"}
    # GDAL's bindings must match the system's GDAL: not a pip dependency (the README says so)
    imported -= {"osgeo"}
    missing = {name: dists.get(name) for name in imported
               if not {d.lower() for d in dists.get(name, [name])} & required}
    assert not missing, f"core imports these without declaring their distribution: {missing}"


def test_a_worker_with_only_the_wheel_runs_the_frequency_stage(wheel_site, sample_servers, sample_archive, tmp_path):
    from distributed import Client, LocalCluster

    from cloud_probability.core.executor import DaskExecutor

    target = wheel_site
    assert (target / "cloud_probability" / "core" / "frequency.py").is_file()
    assert not (target / "cloud_probability" / "plugin.py").exists()

    x0, y0, x1, y1 = json.loads((sample_archive / "archive.json").read_text())["aoi_27700"]
    grid = grid_for_area((x0, y0, x1, y1), "EPSG:27700", 20.0)
    scenes = served_scenes(sample_servers)
    outputs = {}
    for name in ("here", "worker"):
        (tmp_path / name).mkdir()
        outputs[name] = {k: str(tmp_path / name / f"{k}.tif") for k in ("probability", "valid", "cloudy", "stdev")}
    cloud_frequency(scenes, grid, PRESETS["scl"], outputs["here"], tile_px=64, measure="mean_probability",
                    cache_dir=tmp_path / "cache-here")

    # a worker that finds cloud_probability nowhere but in the wheel: its own PYTHONPATH, and a
    # working folder outside the checkout
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(target)
    log = tmp_path / "worker.log"
    with LocalCluster(n_workers=0, processes=False, protocol="tcp://", host="127.0.0.1",
                      dashboard_address=None) as cluster, \
            Client(cluster) as client, open(log, "wb") as log_file:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        worker = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", cluster.scheduler_address, "--nthreads", "1",
             "--no-nanny", "--no-dashboard", "--host", "127.0.0.1", "--local-directory", str(tmp_path / "scratch")],
            cwd=elsewhere, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            try:
                client.wait_for_workers(1, timeout=120)
            except TimeoutError:
                pytest.fail(f"the worker did not join: {log.read_text()[-3000:]}")
            assert list(client.run(os.getpid).values()) == [worker.pid]
            where = client.run(lambda: __import__("cloud_probability.core.frequency").core.frequency.__file__)
            assert list(where.values()) == [str(target / "cloud_probability" / "core" / "frequency.py")]

            executor = DaskExecutor(client)
            cloud_frequency(scenes, grid, PRESETS["scl"], outputs["worker"], tile_px=64, measure="mean_probability",
                            cache_dir=tmp_path / "cache-worker", scheduler=executor)
            assert executor.tasks == 16  # every tile ran on the worker
        finally:
            worker.terminate()
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(30)
    for key in outputs["here"]:
        assert Path(outputs["here"][key]).read_bytes() == Path(outputs["worker"][key]).read_bytes(), key
