"""The same stages on a Dask cluster: a real LocalCluster of 2 worker processes on loopback.

Frequency tiles, smoothing strips (both methods) and zonal batches run as tasks; their
outputs must be those of the run in this process byte for byte (rasters) and exactly (tables),
also when a worker process is killed mid-run.
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import BUILD, served_scenes

from cloud_probability.core.frequency import cloud_frequency, grid_for_area
from cloud_probability.core.masks import PRESETS
from cloud_probability.core.smoothing import reference_adjustment, smooth_probability
from cloud_probability.core.zonal import zonal_statistics

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cluster():
    """2 worker processes (1 thread each) that import the plugin's core like the tests do."""
    from distributed import Client, LocalCluster

    # workers are new processes: they find cloud_probability through PYTHONPATH, as a cluster
    # node would through the wheel (or Client.upload_file)
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(BUILD / "plugins")] + ([old] if old else []))
    try:
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address=None) as running, Client(running) as client:
            yield client
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


@pytest.fixture(scope="module")
def grid(sample_archive):
    x0, y0, x1, y1 = json.loads((sample_archive / "archive.json").read_text())["aoi_27700"]
    return grid_for_area((x0, y0, x1, y1), "EPSG:27700", 20.0)


def _outputs(folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    return {k: str(folder / f"{k}.tif") for k in ("probability", "valid", "cloudy", "stdev")}


def _same_files(a: dict, b: dict) -> None:
    for key in a:
        assert Path(a[key]).read_bytes() == Path(b[key]).read_bytes(), key


@pytest.fixture(scope="module")
def here(sample_servers, grid, tmp_path_factory):
    """The reference measure's counts made in this process."""
    folder = tmp_path_factory.mktemp("here")
    out = _outputs(folder / "counts")
    cloud_frequency(served_scenes(sample_servers), grid, PRESETS["scl"], out, tile_px=64, measure="mean_probability",
                    cache_dir=folder / "cache")
    return out


@pytest.mark.parametrize("measure", ["mean_probability", "frequency"])
def test_frequency_on_the_cluster_is_the_same_bit_for_bit(cluster, sample_servers, grid, here, tmp_path, measure):
    scenes = served_scenes(sample_servers)
    mine = here if measure == "mean_probability" else _outputs(tmp_path / "local")
    if measure == "frequency":
        cloud_frequency(scenes, grid, PRESETS["scl"], mine, tile_px=64, measure=measure, cache_dir=tmp_path / "c1")
    theirs = _outputs(tmp_path / "dask")
    result = cloud_frequency(scenes, grid, PRESETS["scl"], theirs, tile_px=64, measure=measure,
                             cache_dir=tmp_path / "c2", scheduler=cluster)
    assert result.tiles == 16
    _same_files(mine, theirs)


def test_smoothing_both_methods_on_the_cluster(cluster, here, sample_archive, tmp_path):
    urban = str(sample_archive / "truth" / "urban_fraction_27700.tif")
    for name, scheduler in (("local", None), ("dask", cluster)):
        reference_adjustment(here["cloudy"], here["valid"], str(tmp_path / f"{name}_lag.tif"),
                             str(tmp_path / f"{name}_ref.tif"), memory_mb=0.6, scheduler=scheduler)
        smooth_probability(here["cloudy"], here["valid"], str(tmp_path / f"{name}_smooth.tif"),
                           str(tmp_path / f"{name}_counts.tif"), covariates=[urban], memory_mb=0.6, scheduler=scheduler)
    for stem in ("lag", "ref", "smooth", "counts"):
        assert (tmp_path / f"local_{stem}.tif").read_bytes() == (tmp_path / f"dask_{stem}.tif").read_bytes(), stem
    for stem in ("ref", "counts"):
        assert (tmp_path / f"local_{stem}.regression.json").read_text() == \
            (tmp_path / f"dask_{stem}.regression.json").read_text()


def test_zonal_batches_on_the_cluster(cluster, here, sample_archive):
    import geopandas as gpd

    zones = gpd.read_file(sample_archive / "zones" / "small_areas.gpkg", layer="small_areas")
    args = (here["probability"], zones, "code", here["valid"])
    local = zonal_statistics(*args, spread_path=here["stdev"], batch_size=40).table
    remote = zonal_statistics(*args, spread_path=here["stdev"], batch_size=40, scheduler=cluster).table
    assert len(local) == 300 and local["probability_ci95_low"].notna().all()
    pd.testing.assert_frame_equal(local, remote, check_exact=True)


def test_a_worker_killed_mid_run_changes_nothing(cluster, sample_servers, grid, here, tmp_path):
    """The scheduler runs a dead worker's tasks again; the outputs are the same bit for bit."""
    out = _outputs(tmp_path / "killed")
    done, errors = [], []

    def run():
        try:
            done.append(cloud_frequency(served_scenes(sample_servers), grid, PRESETS["scl"], out, tile_px=64,
                                        measure="mean_probability", cache_dir=tmp_path / "c", scheduler=cluster))
        except BaseException as exc:  # reported below
            errors.append(exc)

    pids = cluster.run(os.getpid)
    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list((tmp_path / "c").rglob("tile_*.npz")):
        time.sleep(0.05)  # the first tiles are in: the run is under way
    victim = sorted(pids.values())[0]
    os.kill(victim, signal.SIGKILL)
    worker.join(300)
    assert not errors, errors
    assert done and not worker.is_alive()
    assert victim not in cluster.run(os.getpid).values()  # the nanny started a new process
    _same_files(here, out)


def test_processing_runs_on_a_scheduler_on_loopback(cluster, provider, sample_servers, sample_archive, grid, here,
                                                     tmp_path):
    from qgis import processing

    address = cluster.scheduler.address
    assert address.startswith("tcp://127.0.0.1:")
    x0, y0, x1, y1 = json.loads((sample_archive / "archive.json").read_text())["aoi_27700"]
    processing.run("cloudprob:searchscenes", {
        "STAC_URL": sample_servers.stac.url, "AOI": f"{x0},{x1},{y0},{y1} [EPSG:27700]", "START_DATE": "2024-01-01",
        "END_DATE": "2024-12-31", "OUTPUT": str(tmp_path / "scenes.gpkg")})
    result = processing.run("cloudprob:cloudfrequency", {
        "SCENES": str(tmp_path / "scenes.gpkg"), "GRID_LIKE": here["valid"], "MEASURE": 1, "DASK_SCHEDULER": address,
        "OUTPUT_PROBABILITY": str(tmp_path / "p.tif"), "OUTPUT_VALID": str(tmp_path / "v.tif"),
        "OUTPUT_CLOUDY": str(tmp_path / "c.tif"), "OUTPUT_STDEV": str(tmp_path / "s.tif")})
    # the algorithm's own tile size differs from the fixture's: compare pixels, not files
    import rasterio

    for key, name in (("valid", "v.tif"), ("probability", "p.tif"), ("cloudy", "c.tif")):
        np.testing.assert_array_equal(rasterio.open(here[key]).read(), rasterio.open(tmp_path / name).read(), key)
    smoothed = processing.run("cloudprob:smoothprobability", {
        "CLOUDY": result["OUTPUT_CLOUDY"], "VALID": result["OUTPUT_VALID"], "METHOD": 1, "DASK_SCHEDULER": address,
        "OUTPUT_SMOOTHED": str(tmp_path / "lag.tif"), "OUTPUT_ADJUSTED": str(tmp_path / "adj.tif")})
    reference_adjustment(result["OUTPUT_CLOUDY"], result["OUTPUT_VALID"], str(tmp_path / "lag2.tif"),
                         str(tmp_path / "adj2.tif"))
    assert (tmp_path / "adj.tif").read_bytes() == (tmp_path / "adj2.tif").read_bytes()
    zones = f"{sample_archive / 'zones' / 'small_areas.gpkg'}|layername=small_areas"
    processing.run("cloudprob:zonalstatistics", {
        "INPUT_RASTER": smoothed["OUTPUT_ADJUSTED"], "ZONES": zones, "ZONE_ID_FIELD": "code",
        "VALID": result["OUTPUT_VALID"], "SPREAD": result["OUTPUT_STDEV"], "DASK_SCHEDULER": address,
        "OUTPUT": str(tmp_path / "z.gpkg"), "OUTPUT_CSV": str(tmp_path / "z.csv")})
    processing.run("cloudprob:zonalstatistics", {
        "INPUT_RASTER": smoothed["OUTPUT_ADJUSTED"], "ZONES": zones, "ZONE_ID_FIELD": "code",
        "VALID": result["OUTPUT_VALID"], "SPREAD": result["OUTPUT_STDEV"],
        "OUTPUT": str(tmp_path / "z2.gpkg"), "OUTPUT_CSV": str(tmp_path / "z2.csv")})
    assert (tmp_path / "z.csv").read_text() == (tmp_path / "z2.csv").read_text()


# ------------------------------------------------------------------ a cluster of separate processes
class SeparateCluster:
    """``dask scheduler`` and ``dask worker`` started as commands, as a user's cluster is: each its own
    process group, the workers (2 processes under their nannies) finding the scheduler through a
    scheduler file, each Python finding ``cloud_probability`` only where its PYTHONPATH says.

    Stopped by :meth:`stop` (SIGTERM, as a job scheduler ends them; SIGKILL to what is left after 30 s),
    which checks that no process of theirs is left."""

    def __init__(self, folder: Path, scheduler_path: Path | None, worker_path: Path):
        import subprocess
        import sys

        dask = Path(sys.executable).parent / "dask"
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.scheduler_file = folder / "scheduler.json"
        self.processes = []
        base = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        cwd = folder / "elsewhere"  # a working folder outside the checkout
        cwd.mkdir(exist_ok=True)

        def start(name, args, path):
            env = dict(base, **({"PYTHONPATH": str(path)} if path is not None else {}))
            log = open(folder / f"{name}.log", "wb")
            proc = subprocess.Popen([str(dask), *args], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            log.close()
            self.processes.append(proc)
            return proc

        try:
            self.scheduler = start("scheduler", ["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                                 "--scheduler-file", str(self.scheduler_file)], scheduler_path)
            deadline = time.monotonic() + 60
            while not self.scheduler_file.exists():
                assert self.scheduler.poll() is None and time.monotonic() < deadline, self.log("scheduler")
                time.sleep(0.1)
            self.address = json.loads(self.scheduler_file.read_text())["address"]
            self.workers = start("workers", ["worker", "--scheduler-file", str(self.scheduler_file), "--nworkers", "2",
                                             "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1",
                                             "--local-directory", str(folder / "scratch")], worker_path)
        except BaseException:
            self.stop()
            raise

    def log(self, name: str) -> str:
        path = self.folder / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        import subprocess

        for proc in reversed(self.processes):  # the workers first, then the scheduler
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # nannies' workers left behind, if any
            except ProcessLookupError:
                pass
            proc.wait(10)
        deadline = time.monotonic() + 10
        for proc in self.processes:
            while True:
                try:
                    os.killpg(proc.pid, 0)  # anyone of the group still there?
                except ProcessLookupError:
                    break
                assert time.monotonic() < deadline, f"processes of group {proc.pid} outlived the cluster"
                time.sleep(0.1)


def test_a_separate_scheduler_and_workers_run_the_frequency_stage(wheel_site, sample_servers, grid, here, tmp_path):
    """The README's cluster (issue 22): `dask scheduler` and `dask worker` processes, both with the wheel,
    run a stage given the scheduler's address, as DASK_SCHEDULER and --scheduler give it; the outputs
    are the in-process run's byte for byte, and everything started is stopped."""
    import importlib.util

    from distributed import Client

    from cloud_probability.core.executor import DaskExecutor

    cluster = SeparateCluster(tmp_path / "cluster", wheel_site, wheel_site)
    try:
        assert cluster.address.startswith("tcp://127.0.0.1:")
        with Client(cluster.address, timeout="30s") as client:
            try:
                client.wait_for_workers(2, timeout=120)
            except TimeoutError:
                pytest.fail(f"the workers did not join: {cluster.log('workers')}")
            # the scheduler is the process started above, and it imports the package from the wheel
            assert client.run_on_scheduler(os.getpid) == cluster.scheduler.pid
            origin = client.run_on_scheduler(lambda: importlib.util.find_spec("cloud_probability").origin)
            assert origin == str(wheel_site / "cloud_probability" / "__init__.py")
            workers = client.run(os.getpid)
            assert len(workers) == 2 and os.getpid() not in workers.values()
            assert cluster.scheduler.pid not in workers.values()

        executor = DaskExecutor(cluster.address)  # its own client, as the algorithms and the CLI make
        try:
            out = _outputs(tmp_path / "separate")
            result = cloud_frequency(served_scenes(sample_servers), grid, PRESETS["scl"], out, tile_px=64,
                                     measure="mean_probability", cache_dir=tmp_path / "cache", scheduler=executor)
        finally:
            executor.close()
        assert result.tiles == 16 and executor.tasks == 16
        _same_files(here, out)
    finally:
        cluster.stop()


def test_a_scheduler_without_the_package_fails_every_task_and_says_why(wheel_site, sample_servers, grid,
                                                                         tmp_path):
    """What the README warns of: workers with the wheel, a scheduler without it. Recent distributed
    unpickles the task graph on the scheduler, so the first task fails there; the run stops with a
    sentence naming the scheduler and what to install."""
    import importlib.util

    from distributed import Client

    cluster = SeparateCluster(tmp_path / "cluster", None, wheel_site)
    try:
        with Client(cluster.address, timeout="30s") as client:
            try:
                client.wait_for_workers(2, timeout=120)
            except TimeoutError:
                pytest.fail(f"the workers did not join: {cluster.log('workers')}")
            assert client.run_on_scheduler(lambda: importlib.util.find_spec("cloud_probability")) is None
            assert all(client.run(lambda: importlib.util.find_spec("cloud_probability") is not None).values())
        out = _outputs(tmp_path / "never")
        with pytest.raises(RuntimeError) as raised:
            cloud_frequency(served_scenes(sample_servers), grid, PRESETS["scl"], out, tile_px=64,
                            measure="mean_probability", cache_dir=tmp_path / "cache", scheduler=cluster.address)
        message = str(raised.value)
        assert message.startswith(f"The Dask scheduler at {cluster.address} could not read the tasks "
                                  f"(Error during deserialization of the task graph)"), message
        assert "must be able to import cloud_probability" in message and "'make wheel'" in message
        assert "No module named 'cloud_probability'" in cluster.log("scheduler")  # the scheduler's own account
        assert not Path(out["probability"]).exists()
    finally:
        cluster.stop()
