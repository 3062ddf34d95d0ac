"""What the 2024 release's published code changes against the documented method, measured on the sample
archive (docs/variants.md quotes this script's output).

    .venv/bin/python scripts/compare_variants.py

Serves the sample archive on loopback, makes the counts both ways (one observation per acquisition, one
per product), adjusts them both ways (the documented reference adjustment, METHOD=1; as published,
METHOD=2) and makes the table per small area; prints, for each step apart and for the two variants
whole, the per-pixel and per-area differences (mean, median, min, max, stdev of each column's difference
over the areas, percentage points or counts).
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / ".build"


def main() -> int:
    sys.path.insert(0, str(ROOT / "scripts"))
    from devpaths import ensure_plugin_importable

    ensure_plugin_importable()
    import geopandas as gpd
    import rasterio
    import servers
    from cloud_probability.core.frequency import cloud_frequency, grid_for_area
    from cloud_probability.core.masks import PRESETS
    from cloud_probability.core.smoothing import published_adjustment, reference_adjustment
    from cloud_probability.core.stac import normalise_item
    from cloud_probability.core.zonal import zonal_statistics
    from cloud_probability.sampledata.sample_archive import SampleSpec, generate

    archive = generate(BUILD / "sample-small", SampleSpec.small())
    info = json.loads((archive / "archive.json").read_text())
    zones = gpd.read_file(archive / "zones" / "small_areas.gpkg", layer="small_areas")
    grid = grid_for_area(tuple(info["aoi_27700"]), "EPSG:27700", 20.0)
    out = Path(tempfile.mkdtemp(prefix="variants-", dir=BUILD))
    tables, rasters, fits = {}, {}, {}
    with servers.SampleServers(archive, out / "servers") as running:
        items = json.loads((running.workdir / "served_items.json").read_text())["features"]
        scenes = [normalise_item(i) for i in items]
        for observations in ("datatake", "product"):
            paths = {k: str(out / f"{observations}_{k}.tif") for k in ("probability", "valid", "cloudy")}
            cloud_frequency(scenes, grid, PRESETS["scl"], paths, measure="mean_probability", observations=observations,
                            cache_dir=out / "cache")
            for method in ("documented", "published"):
                name = f"{observations}/{method}"
                adjusted, second = str(out / f"{observations}_{method}_adj.tif"), str(out / f"{observations}_{method}_2.tif")
                lag = str(out / f"{observations}_{method}_lag.tif")
                if method == "documented":
                    fits[name] = reference_adjustment(paths["cloudy"], paths["valid"], lag, adjusted)
                    second = paths["valid"]
                else:
                    fits[name] = published_adjustment(paths["cloudy"], paths["valid"], lag, adjusted, second)
                with rasterio.open(adjusted) as ds:
                    rasters[name] = np.where(ds.read(1) == ds.nodata, np.nan, ds.read(1).astype(np.float64))
                tables[name] = zonal_statistics(adjusted, zones, "code", valid_path=second).table.set_index("code")
        n = {o: rasterio.open(str(out / f"{o}_valid.tif")).read(1) for o in ("datatake", "product")}

    print(f"Sample archive: {len(items)} items, {info['datatakes']} datatakes, grid {grid.shape[1]} × {grid.shape[0]} "
          f"px of 20 m (EPSG:27700), {len(zones)} small areas")
    print(f"Observations per pixel: one per acquisition {n['datatake'].min()}–{n['datatake'].max()}, one per product "
          f"{n['product'].min()}–{n['product'].max()} ({np.mean(n['product'] > n['datatake']) * 100:.0f} % of pixels "
          "counted more)")
    for name, fit in fits.items():
        print(f"  fit {name:20s} a {fit.intercept:9.4f}  b {fit.slope:+.6f}  m {fit.median_deviation_pct:+.4f} %  "
              f"R² {fit.r2:.4f}  rows {fit.pixels}")
    steps = [("observations only (documented adjustment)", "datatake/documented", "product/documented"),
             ("adjustment only (per-acquisition counts)", "datatake/documented", "datatake/published"),
             ("the two variants whole (documented → as published)", "datatake/documented", "product/published")]
    columns = [f"{p}_{s}" for p in ("probability", "acquisition_count") for s in ("mean", "median", "min", "max", "stdev")]
    for title, a, b in steps:
        pixel = np.abs(rasters[b] - rasters[a])
        print(f"\n{title}: adjusted probability per pixel |Δ| max {np.nanmax(pixel):.2f}, mean {np.nanmean(pixel):.3f} pp")
        print(f"  {'column':28s} {'documented mean':>15s} {'published mean':>15s} {'Δ mean':>8s} {'Δ median':>8s} "
              f"{'Δ min':>8s} {'Δ max':>8s} {'Δ stdev':>8s} {'|Δ| max':>8s}")
        for column in columns:
            x, y = tables[a][column].astype(float), tables[b][column].astype(float)
            d = (y - x).dropna()
            print(f"  {column:28s} {x.mean():15.3f} {y.mean():15.3f} {d.mean():8.3f} {d.median():8.3f} {d.min():8.3f} "
                  f"{d.max():8.3f} {d.std(ddof=0):8.3f} {d.abs().max():8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
