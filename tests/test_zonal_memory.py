"""Zonal statistics of a raster larger than the memory the process may take: read by areas and
windows, never whole. The run under an address-space limit (RLIMIT_AS) gives the numbers of the
unlimited run, and the same limit stops a whole-raster read (so the limit binds)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import rasterio
from conftest import BUILD
from rasterio.transform import from_origin
from rasterio.windows import Window

SIZE = 40_000  # cells a side: 6.4 GB of float32, more than the limit below

SCRIPT = r"""
import json, resource, sys
limit = int(sys.argv[1])
if limit:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
import geopandas as gpd
from cloud_probability.core.zonal import zonal_statistics
if sys.argv[3] == "whole":
    import rasterio
    try:
        rasterio.open(sys.argv[2]).read(1)
        print(json.dumps("read"))
    except MemoryError:
        print(json.dumps("MemoryError"))
    raise SystemExit(0)
zones = gpd.read_file(sys.argv[3])
table = zonal_statistics(sys.argv[2], zones, "code", batch_size=2).table
print(json.dumps(table.drop(columns=["code"]).round(9).values.tolist()))
"""


def _vm_peak_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmPeak"))


def test_zonal_statistics_of_a_raster_larger_than_memory(tmp_path):
    import geopandas as gpd
    from shapely.geometry import box

    path = tmp_path / "big.tif"
    rng = np.random.default_rng(7)
    windows = [(1000, 1000), (20_000, 5_000), (39_000, 39_000), (12_345, 30_001)]
    with rasterio.open(path, "w", driver="GTiff", width=SIZE, height=SIZE, count=1, dtype="float32", nodata=-9999.0,
                       crs="EPSG:27700", transform=from_origin(0, SIZE * 20.0, 20.0, 20.0), tiled=True,
                       blockxsize=512, blockysize=512, compress="DEFLATE", sparse_ok=True) as ds:
        for r, c in windows:  # data only where the zones are; the rest is sparse (no data)
            ds.write(rng.uniform(0, 100, (1, 600, 600)).astype(np.float32), window=Window(c, r, 600, 600))
    assert path.stat().st_size < 50e6
    zones = gpd.GeoDataFrame({"code": [f"z{i}" for i in range(len(windows))]}, geometry=[
        box((c + 50) * 20.0, (SIZE - r - 550) * 20.0, (c + 550) * 20.0 - 7.0, (SIZE - r - 50) * 20.0 - 3.0)
        for r, c in windows], crs="EPSG:27700")
    zones.to_file(tmp_path / "zones.gpkg", driver="GPKG")
    env = dict(os.environ, PYTHONPATH=str(BUILD / "plugins"))

    def run(limit, mode):
        done = subprocess.run([sys.executable, "-c", SCRIPT, str(limit), str(path), mode], env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    free = run(0, str(tmp_path / "zones.gpkg"))
    # the interpreter with its libraries maps address space of its own: measure it, then allow
    # 1.5 GB more, a quarter of the raster
    probe = subprocess.Popen([sys.executable, "-c", "import geopandas, exactextract, rasterio, sys; "
                              "from cloud_probability.core import zonal; sys.stdin.read()"],
                             env=env, stdin=subprocess.PIPE, text=True)
    try:
        import time

        time.sleep(4)
        base = _vm_peak_kb(probe.pid) * 1024
    finally:
        probe.communicate("")
    limit = base + 1_500_000_000
    assert run(limit, "whole") == "MemoryError"  # the limit binds: the whole raster does not fit
    limited = run(limit, str(tmp_path / "zones.gpkg"))
    assert limited == free
    assert all(row[0] is not None for row in free)  # every zone found its data
