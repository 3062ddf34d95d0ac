"""Area screening: windowed COG reads (cloudprob) against the naive approach users fall back
to — download each whole SCL, then count the area's pixels — on full-size sample scenes
served by nginx on loopback, with and without 50 ms of added latency per request.

Bytes are counted by nginx's access log; both sides read the same scenes with the same
number of threads, from a cold GDAL cache.
"""
from __future__ import annotations

import concurrent.futures as cf
import io
import json
import time
import urllib.request
from pathlib import Path

import numpy as np

from common import BUILD, ensure_plugin_importable, report, table

ensure_plugin_importable()

import servers  # noqa: E402
from cloud_probability.core import sample_archive as sa  # noqa: E402
from cloud_probability.core.masks import PRESETS  # noqa: E402
from cloud_probability.core.reading import area_in_crs, clear_http_cache  # noqa: E402
from cloud_probability.core.screening import screen_scenes  # noqa: E402
from cloud_probability.core.stac import normalise_item  # noqa: E402

FULL_SPEC = sa.SampleSpec.full(max_datatakes=28, truecolor_every=0)
AREA_KM = 5.0
CONCURRENCY = 16


def full_archive() -> Path:
    t0 = time.monotonic()
    archive = sa.generate(BUILD / "sample-full", FULL_SPEC, workers=2)
    elapsed = time.monotonic() - t0
    if elapsed > 5:
        print(f"(generated the full-size archive in {elapsed:.0f} s)")
    return archive


def scenes_for(archive: Path, base_url: str, area, area_epsg: int):
    from shapely.geometry import shape

    served = servers.write_items_for(archive, base_url, BUILD / "bench" / f"items-{base_url.rsplit(':', 1)[1]}.json")
    items = json.loads(served.read_text())["features"]
    area_ll = area_in_crs(area, area_epsg, 4326)
    # what a STAC search for the area returns: every item whose footprint touches it
    return [normalise_item(i) for i in items if shape(i["geometry"]).intersects(area_ll)]


def naive(scenes, area, area_epsg: int, concurrency: int) -> dict[str, float]:
    """Download each whole SCL, decode it, count the area's pixels (per scene)."""
    from rasterio import features
    from rasterio.io import MemoryFile

    import threading

    areas = {}
    lock = threading.Lock()  # rasterio's rasterize is not safe from several threads at once

    def one(scene):
        body = urllib.request.urlopen(scene.asset_href("scl"), timeout=120).read()
        with MemoryFile(io.BytesIO(body)) as mem, mem.open() as ds:
            scl = ds.read(1)
            key = ds.crs.to_epsg()
            if key not in areas:
                areas[key] = area_in_crs(area, area_epsg, ds.crs)
            with lock:
                inside = features.geometry_mask([areas[key]], scl.shape, ds.transform, invert=True)
        values = scl[inside]
        valid = np.count_nonzero(values > 1)
        return scene.item_id, (100.0 * np.isin(values, [8, 9, 10]).sum() / valid) if valid else None

    with cf.ThreadPoolExecutor(concurrency) as pool:
        return dict(pool.map(one, scenes))


def measure(cogs, base_url: str, archive: Path, area, label: str) -> dict:
    scenes = scenes_for(archive, base_url, area, 27700)
    clear_http_cache()
    b0, r0, t0 = cogs.bytes_sent(), cogs.requests(), time.monotonic()
    ours = screen_scenes(scenes, area, 27700, PRESETS["scl"], concurrency=CONCURRENCY)
    t_ours, b_ours, r_ours = time.monotonic() - t0, cogs.bytes_sent() - b0, cogs.requests() - r0
    b0, r0, t0 = cogs.bytes_sent(), cogs.requests(), time.monotonic()
    theirs = naive(scenes, area, 27700, CONCURRENCY)
    t_naive, b_naive, r_naive = time.monotonic() - t0, cogs.bytes_sent() - b0, cogs.requests() - r0
    assert ours.errors == 0 and len(theirs) == len(scenes)
    return {
        "label": label, "scenes": len(scenes), "acquisitions": len(ours.observations),
        "ours": {"seconds": t_ours, "bytes": b_ours, "requests": r_ours},
        "naive": {"seconds": t_naive, "bytes": b_naive, "requests": r_naive},
        "bytes_ratio": b_naive / b_ours, "time_ratio": t_naive / t_ours,
    }


def main() -> dict:
    archive = full_archive()
    info = json.loads((archive / "archive.json").read_text())
    gx, gy = sa.GREENWICH_27700
    half = AREA_KM * 500.0
    from shapely.geometry import box

    area = box(gx - half, gy - half, gx + half, gy + half)  # straddles UTM 30/31 and two tile rows
    results = []
    with servers.CogServer(archive, workdir=BUILD / "bench" / "nginx") as cogs:
        results.append(measure(cogs, cogs.url, archive, area, "loopback"))
        with servers.LatencyProxy(cogs.port, 50.0) as proxy:
            results.append(measure(cogs, proxy.url, archive, area, "+50 ms per request"))
    rows = []
    for r in results:
        rows.append([
            r["label"], f"{r['scenes']} scenes / {r['acquisitions']} acq.",
            f"{r['ours']['bytes'] / 1e6:.2f} MB", f"{r['naive']['bytes'] / 1e6:.1f} MB", f"{r['bytes_ratio']:.1f}×",
            f"{r['ours']['seconds']:.2f} s", f"{r['naive']['seconds']:.2f} s", f"{r['time_ratio']:.1f}×",
            f"{r['ours']['requests']} / {r['naive']['requests']}",
        ])
    print(f"Area screening: {AREA_KM:g} km × {AREA_KM:g} km around Greenwich, full-size 5490×5490 SCL COGs "
          f"({info['items']} items, {info['datatakes']} acquisitions), {CONCURRENCY} threads each, cold cache")
    print(table(["network", "scenes", "bytes (ours)", "bytes (naive)", "bytes ratio", "time (ours)",
                 "time (naive)", "time ratio", "requests ours/naive"], rows))
    print("  goal: ≥ 20× fewer bytes and ≥ 10× less time than the naive approach")
    report("screening", results)
    return {"results": results}


if __name__ == "__main__":
    main()
