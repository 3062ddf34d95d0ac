"""Small-area statistics and smoothing at national scale, in the same run:

* zonal statistics of 40,000 small areas over a 10,000 × 10,000-cell (100 M) probability raster:
  cloudprob (exactextract, exact coverage fractions) against QGIS's own
  ``native:zonalstatisticsfb`` (cells whose centre falls inside), time ratio and the mean absolute
  difference of the area means;
* acquisition-weighted 21×21 smoothing of 100 M-cell count rasters (read, smooth, divide, write
  in strips) against a plain in-memory ``scipy.ndimage.uniform_filter`` of one raster — the
  floor no smoothing can beat.

Data are generated once under .build/bench/national (a smooth probability surface on EPSG:27700
at 20 m, counts drawn from it, Voronoi small areas with LSOA-like codes).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from common import BUILD, ensure_plugin_importable, report, table

ensure_plugin_importable()

SIZE = 10_000  # cells per side: 100 M cells
N_ZONES = 40_000
RES = 20.0
ORIGIN = (400_000.0, 400_000.0)  # upper-left corner, EPSG:27700
DATA = BUILD / "bench" / "national"


def _write(path: Path, dtype: str, nodata, fill_strip) -> None:
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    tmp = path.with_suffix(".part.tif")
    with rasterio.open(tmp, "w", driver="GTiff", width=SIZE, height=SIZE, count=1, dtype=dtype, crs="EPSG:27700",
                       transform=from_origin(*ORIGIN, RES, RES), nodata=nodata, tiled=True, blockxsize=512,
                       blockysize=512, compress="DEFLATE", BIGTIFF="YES") as dst:
        for r0 in range(0, SIZE, 1000):
            dst.write(fill_strip(r0, min(SIZE, r0 + 1000))[None], window=Window(0, r0, SIZE, min(1000, SIZE - r0)))
    tmp.replace(path)


def data() -> dict[str, Path]:
    paths = {k: DATA / f"{k}.tif" for k in ("probability", "valid", "cloudy")}
    paths["zones"] = DATA / "zones.gpkg"
    if all(p.exists() for p in paths.values()):
        return paths
    DATA.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    rng = np.random.default_rng(7)
    cols = np.arange(SIZE) + 0.5

    def probability(r0, r1):
        rows = (np.arange(r0, r1) + 0.5)[:, None]
        u, v = cols[None, :] / SIZE * 2 - 1, rows / SIZE * 2 - 1
        return (55 - 12 * u + 8 * np.sin(3 * v) + 6 * np.cos(7 * u * v)).astype(np.float32)

    def valid(r0, r1):
        rows = (np.arange(r0, r1) + 0.5)[:, None]
        return np.broadcast_to(np.where((cols[None, :] + rows * 0.2) % 3000 < 1200, 140, 75), (r1 - r0, SIZE)).astype(np.uint16)

    def cloudy(r0, r1):
        return rng.binomial(valid(r0, r1), probability(r0, r1) / 100.0).astype(np.uint16)

    _write(paths["probability"], "float32", -9999.0, probability)
    _write(paths["valid"], "uint16", None, valid)
    _write(paths["cloudy"], "uint16", None, cloudy)
    import geopandas as gpd
    from shapely.geometry import MultiPoint, box
    from shapely.ops import voronoi_diagram

    x0, y1 = ORIGIN
    extent = box(x0, y1 - SIZE * RES, x0 + SIZE * RES, y1)
    pts = np.column_stack([rng.uniform(x0, x0 + SIZE * RES, N_ZONES), rng.uniform(y1 - SIZE * RES, y1, N_ZONES)])
    cells = [c.intersection(extent) for c in voronoi_diagram(MultiPoint(pts), envelope=extent).geoms]
    cells = [c for c in cells if not c.is_empty][:N_ZONES]
    gpd.GeoDataFrame({"code": [f"E01{i + 1:06d}" for i in range(len(cells))]}, geometry=cells, crs="EPSG:27700").to_file(
        paths["zones"], layer="zones", driver="GPKG")
    print(f"(generated 3 rasters of {SIZE} × {SIZE} cells and {len(cells)} small areas in {time.monotonic() - t0:.0f} s)")
    return paths


def zonal(paths) -> dict:
    import geopandas as gpd

    from cloud_probability.core.zonal import zonal_statistics

    zones = gpd.read_file(paths["zones"], layer="zones")
    t0 = time.monotonic()
    ours = zonal_statistics(str(paths["probability"]), zones, "code").table
    t_ours = time.monotonic() - t0

    from qgis.core import QgsApplication, QgsProcessing, QgsProcessingFeedback, QgsRasterLayer, QgsVectorLayer

    app = QgsApplication([], False)
    app.initQgis()
    import sys

    sys.path.append("/usr/share/qgis/python/plugins")
    from qgis import processing
    from processing.core.Processing import Processing

    Processing.initialize()
    raster = QgsRasterLayer(str(paths["probability"]), "p")
    layer = QgsVectorLayer(f"{paths['zones']}|layername=zones", "z", "ogr")
    t0 = time.monotonic()
    result = processing.run("native:zonalstatisticsfb", {
        "INPUT": layer, "INPUT_RASTER": raster, "RASTER_BAND": 1, "COLUMN_PREFIX": "q_",
        "STATISTICS": [0, 2, 4, 5, 6], "OUTPUT": QgsProcessing.TEMPORARY_OUTPUT}, feedback=QgsProcessingFeedback())
    t_qgis = time.monotonic() - t0
    qgis_means = {f["code"]: f["q_mean"] for f in result["OUTPUT"].getFeatures()}
    ours_means = dict(zip(ours["code"], ours["probability_mean"]))
    diffs = np.array([abs(ours_means[k] - v) for k, v in qgis_means.items() if v is not None and not np.isnan(ours_means[k])])
    return {"zones": len(zones), "cells": SIZE * SIZE, "ours_s": t_ours, "qgis_s": t_qgis,
            "mean_abs_diff": float(diffs.mean()), "max_abs_diff": float(diffs.max()), "compared": int(len(diffs))}


def smoothing(paths) -> dict:
    import rasterio
    from scipy.ndimage import uniform_filter

    from cloud_probability.core.smoothing import smooth_probability

    out = DATA / "smoothed.tif"
    t0 = time.monotonic()
    smooth_probability(str(paths["cloudy"]), str(paths["valid"]), str(out), adjust=False)
    t_ours = time.monotonic() - t0
    with rasterio.open(paths["valid"]) as ds:
        array = ds.read(1).astype(np.float64)
    t0 = time.monotonic()
    uniform_filter(array, size=21, mode="constant")
    t_floor = time.monotonic() - t0
    return {"cells": SIZE * SIZE, "ours_s": t_ours, "floor_s": t_floor}


def main() -> dict:
    paths = data()
    s = smoothing(paths)
    z = zonal(paths)
    print(f"Small-area statistics: {z['zones']} areas over {z['cells'] / 1e6:.0f} M cells (EPSG:27700, 20 m)")
    print(table(["", "time", "ratio", "mean |Δ mean| vs QGIS", "max |Δ mean|"], [
        ["cloudprob (exactextract)", f"{z['ours_s']:.1f} s", f"{z['qgis_s'] / z['ours_s']:.1f}× faster", f"{z['mean_abs_diff']:.4f} %",
         f"{z['max_abs_diff']:.3f} %"],
        ["QGIS native:zonalstatisticsfb", f"{z['qgis_s']:.1f} s", "1×", "", ""],
    ]))
    print(f"Smoothing 21×21 of {s['cells'] / 1e6:.0f} M cells: cloudprob {s['ours_s']:.1f} s "
          f"({s['cells'] / 1e6 / s['ours_s']:.1f} M cells/s: two counts read, two convolutions, a division, a raster "
          f"written) — floor: one in-memory uniform_filter {s['floor_s']:.1f} s "
          f"({s['cells'] / 1e6 / s['floor_s']:.1f} M cells/s); {s['ours_s'] / s['floor_s']:.1f}× the floor")
    report("zonal_smoothing", {"zonal": z, "smoothing": s})
    return {"zonal": z, "smoothing": s}


if __name__ == "__main__":
    main()
