"""The figures core/costs.py estimates a run's cost with (its MEASURED table): the frequency
stage's rate in pixel-acquisitions per second, and the bytes per pixel and band of its four
rasters, of its resume cache and of a smoothing raster, at resolutions from the sources' own
20 m down to 1 m, for both measures.

Runs core.frequency.cloud_frequency and core.smoothing.reference_adjustment on the small sample
archive served on loopback (nginx and rustac, as the tests), in this process, one size at a
time. Prints a table and the MEASURED entries to paste; writes bench_out/cost.json.

    .venv/bin/python benchmarks/bench_cost.py
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import BUILD, ensure_plugin_importable, report, table

ensure_plugin_importable()

import servers  # noqa: E402
from cloud_probability.core import costs  # noqa: E402
from cloud_probability.core import frequency as fq  # noqa: E402
from cloud_probability.core.masks import PRESETS  # noqa: E402
from cloud_probability.core.screening import group_by_datatake  # noqa: E402
from cloud_probability.core.smoothing import reference_adjustment  # noqa: E402
from cloud_probability.core.stac import normalise_item  # noqa: E402
from cloud_probability.sampledata import sample_archive as sa  # noqa: E402

# (resolution m, half the side of the square around Greenwich in m): at least 4 M pixels below 20 m,
# so the rate is not a start-up cost; 20 m covers the archive's 12 km
SIZES = [(20.0, 6000.0), (5.0, 6000.0), (2.0, 2000.0), (1.0, 1000.0)]
MEASURES = ["mean_probability", "frequency"]


def run_one(scenes, measure: str, resolution: float, half: float, work: Path) -> dict:
    from shapely.geometry import shape

    gx, gy = sa.GREENWICH_27700
    bounds = (gx - half, gy - half, gx + half, gy + half)
    grid = fq.grid_for_area(bounds, "EPSG:27700", resolution)
    footprints = costs.acquisition_footprints(
        {g[0].datatake_id: [shape(s.geometry) if s.geometry else None for s in g] for g in group_by_datatake(scenes)})
    pixels = grid.shape[0] * grid.shape[1]
    load = costs.frequency_work(footprints, grid.crs, grid.transform, grid.shape)
    out = work / f"{measure}-{resolution:g}"
    out.mkdir(parents=True, exist_ok=True)
    outputs = {k: str(out / f"{k}.tif") for k in ("probability", "valid", "cloudy", "stdev")}
    cache_bytes = []
    save = fq._save_tile

    def measured_save(path, arrays):  # the tiles are removed at the end of the run: weigh them as they are saved
        save(path, arrays)
        cache_bytes.append(os.path.getsize(path))

    fq._save_tile = measured_save
    try:
        start = time.monotonic()
        fq.cloud_frequency(scenes, grid, PRESETS["scl"], outputs, cache_dir=out / "cache", measure=measure)
        seconds = time.monotonic() - start
    finally:
        fq._save_tile = save
    reference_adjustment(outputs["cloudy"], outputs["valid"], str(out / "lag.tif"), str(out / "adjusted.tif"))
    return {
        "measure": measure, "resolution_m": resolution, "shape": list(grid.shape), "pixels": pixels,
        "pixel_observations": load.footprint, "tile_pixel_acquisitions": load.tiles, "seconds": seconds,
        "rate_observations": load.footprint / seconds, "rate": load.tiles / seconds,
        "raster_bytes_per_px": sum(os.path.getsize(p) for p in outputs.values()) / pixels,
        "cache_bytes_per_px": sum(cache_bytes) / pixels,
        "smoothing_bytes_per_px": os.path.getsize(out / "adjusted.tif") / pixels,
    }


def main() -> dict:
    archive = sa.generate(BUILD / "sample-small", sa.SampleSpec.small())
    results = []
    with tempfile.TemporaryDirectory() as tmp, servers.SampleServers(archive, Path(tmp) / "servers") as running:
        items = json.loads((running.workdir / "served_items.json").read_text())["features"]
        scenes = [normalise_item(i) for i in items]
        for measure in MEASURES:
            for resolution, half in SIZES:
                results.append(run_one(scenes, measure, resolution, half, Path(tmp) / "runs"))
                r = results[-1]
                print(f"{measure} {resolution:g} m: {r['rate'] / 1e6:.1f} M pixel-acquisitions/s", flush=True)
    rows = [[r["measure"], f"{r['resolution_m']:g}", f"{r['shape'][1]} × {r['shape'][0]}",
             f"{r['pixel_observations'] / 1e6:.0f} M", f"{r['tile_pixel_acquisitions'] / 1e6:.0f} M",
             f"{r['seconds']:.1f}", f"{r['rate_observations'] / 1e6:.1f}", f"{r['rate'] / 1e6:.1f}",
             f"{r['raster_bytes_per_px']:.2f}", f"{r['cache_bytes_per_px']:.2f}", f"{r['smoothing_bytes_per_px']:.2f}"]
            for r in results]
    print(table(["measure", "m", "grid", "pixel-obs", "pixel × acq/tile", "s", "M obs/s", "M/s", "rasters B/px",
                 "cache B/px", "smoothing B/px"],
                rows))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    print(f"\nFor core/costs.py (core at {commit}, 1-minute load {os.getloadavg()[0]:.1f}):")
    finer = {m: min(r["rate"] for r in results if r["measure"] == m and r["resolution_m"] < costs.SOURCE_RESOLUTION_M)
             for m in MEASURES}
    print("RATE_FINER = {" + ", ".join(f'"{m}": {v / 1e6:.1f}e6' for m, v in finer.items()) + "}")
    print("MEASURED_BYTES = {")
    for measure in MEASURES:
        entries = ", ".join(
            f"{round(costs.SOURCE_RESOLUTION_M / r['resolution_m'])}: ({r['raster_bytes_per_px']:.2f}, "
            f"{r['cache_bytes_per_px']:.2f}, {r['smoothing_bytes_per_px']:.2f})"
            for r in results if r["measure"] == measure)
        print(f'    "{measure}": {{{entries}}},')
    print("}")
    report("cost", results)
    return {"results": results}


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
