"""The whole reference chain without QGIS, for cluster and HPC nodes.

    python -m cloud_probability.core.cli --aoi XMIN YMIN XMAX YMAX --aoi-crs EPSG:27700 \\
        --start 2024-01-01 --end 2024-12-31 --zones lsoa.gpkg --zone-id LSOA21CD --out run/ \\
        [--stac-url URL] [--collection sentinel-2-c1-l2a] [--measure mean_probability|frequency] \\
        [--method reference|counts] [--crs EPSG:27700] [--resolution 20] [--scheduler tcp://host:8786]

It runs what the shipped model ``cloudprob:annualcloudprobability`` runs — search, per-pixel
probability with its counts and spread, the adjustment, per-area statistics — through the same
``core`` functions, and writes ``probability.tif``, ``valid.tif``, ``cloudy.tif``,
``spread.tif``, ``probability_smoothed.tif``, ``probability_adjusted.tif`` (with its
``.regression.json``), ``small_areas.gpkg`` and ``small_areas.csv`` into ``--out``. With
``--scheduler`` the tiles, strips and batches run as tasks on that Dask scheduler's workers.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from datetime import date
from pathlib import Path

from .progress import NullProgress


class _Printed(NullProgress):
    """Progress on the terminal: a line per 10 %, warnings and information as they come."""

    def __init__(self, stage: str):
        self.stage, self.shown = stage, -10.0

    def set_progress(self, percent: float) -> None:  # noqa: D102
        if percent >= self.shown + 10.0 or percent >= 100.0 > self.shown:
            self.shown = percent
            print(f"  {self.stage}: {percent:5.1f} %", flush=True)

    def info(self, message: str) -> None:  # noqa: D102
        print(f"  {message}", flush=True)

    def warning(self, message: str) -> None:  # noqa: D102
        print(f"  warning: {message}", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    from pyproj import Transformer

    from .frequency import FrequencyError, cloud_frequency, grid_for_area
    from .masks import PRESETS
    from .search import EARTH_SEARCH_V1, DEFAULT_COLLECTION, SearchError, SearchRequest, search_scenes
    from .smoothing import reference_adjustment, smooth_probability
    from .zonal import ZonalError, write_outputs, zonal_statistics

    parser = argparse.ArgumentParser(prog="python -m cloud_probability.core.cli",
                                     description="The reference cloud probability per small area, without QGIS.")
    parser.add_argument("--aoi", type=float, nargs=4, required=True, metavar=("XMIN", "YMIN", "XMAX", "YMAX"))
    parser.add_argument("--aoi-crs", default="EPSG:27700", help="CRS of --aoi (default EPSG:27700)")
    parser.add_argument("--start", type=date.fromisoformat, required=True)
    parser.add_argument("--end", type=date.fromisoformat, required=True)
    parser.add_argument("--zones", required=True, help="small areas (any vector file GDAL reads)")
    parser.add_argument("--zones-layer")
    parser.add_argument("--zone-id", required=True, help="the zones' id field")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--stac-url", default=EARTH_SEARCH_V1)
    parser.add_argument("--collection", default=DEFAULT_COLLECTION)
    parser.add_argument("--measure", choices=["mean_probability", "frequency"], default="mean_probability")
    parser.add_argument("--method", choices=["reference", "counts"], default="reference")
    parser.add_argument("--crs", default="EPSG:27700", help="CRS of the output grid")
    parser.add_argument("--resolution", type=float, default=20.0, help="metres")
    parser.add_argument("--concurrency", type=int, default=4, help="reads in flight per tile")
    parser.add_argument("--scheduler", default="", help="a Dask scheduler address; empty: this machine")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import geopandas as gpd

    xmin, ymin, xmax, ymax = args.aoi
    if not (xmin < xmax and ymin < ymax):
        parser.error("--aoi is XMIN YMIN XMAX YMAX with XMIN < XMAX and YMIN < YMAX")
    to_lonlat = Transformer.from_crs(args.aoi_crs, 4326, always_xy=True)
    west, south, east, north = to_lonlat.transform_bounds(xmin, ymin, xmax, ymax)
    grid_bounds = Transformer.from_crs(args.aoi_crs, args.crs, always_xy=True).transform_bounds(xmin, ymin, xmax, ymax)
    grid = grid_for_area(grid_bounds, args.crs, args.resolution)
    zones = gpd.read_file(args.zones, layer=args.zones_layer) if args.zones_layer else gpd.read_file(args.zones)
    args.out.mkdir(parents=True, exist_ok=True)
    out = {k: str(args.out / f"{name}.tif") for k, name in (
        ("probability", "probability"), ("valid", "valid"), ("cloudy", "cloudy"), ("stdev", "spread"))}
    started = time.monotonic()
    try:
        print(f"Search {args.stac_url} {args.collection} {args.start}…{args.end}", flush=True)
        found = search_scenes(SearchRequest(args.stac_url, args.collection, (west, south, east, north), args.start,
                                            args.end), _Printed("search"))
        print(f"  {len(found.scenes)} scenes; grid {grid.shape[1]} × {grid.shape[0]} px of {args.resolution:g} m "
              f"in {args.crs}", flush=True)
        result = cloud_frequency(found.scenes, grid, PRESETS["scl"], out, measure=args.measure,
                                 concurrency=args.concurrency, progress=_Printed("frequency"),
                                 scheduler=args.scheduler or None)
        print(f"  {result.acquisitions} acquisitions, {result.pixel_observations / 1e6:.1f} M pixel-observations, "
              f"{result.bytes_fetched / 1e6:.1f} MB, {len(result.unreadable)} unreadable", flush=True)
        smoothed, adjusted = str(args.out / "probability_smoothed.tif"), str(args.out / "probability_adjusted.tif")
        if args.method == "reference":
            fit = reference_adjustment(out["cloudy"], out["valid"], smoothed, adjusted, progress=_Printed("adjustment"),
                                       scheduler=args.scheduler or None)
            print(f"  p = {fit.intercept:.3f} {fit.slope:+.5f} × d', m {fit.median_deviation_pct:+.3f} %, "
                  f"R² {fit.r2:.3f}", flush=True)
        else:
            smooth_probability(out["cloudy"], out["valid"], smoothed, adjusted, progress=_Printed("smoothing"),
                               scheduler=args.scheduler or None)
        table = zonal_statistics(adjusted, zones, args.zone_id, out["valid"], _Printed("zonal"),
                                 spread_path=out["stdev"], scheduler=args.scheduler or None)
        write_outputs(table, zones, args.zone_id, str(args.out / "small_areas.gpkg"), str(args.out / "small_areas.csv"))
    except (SearchError, FrequencyError, ZonalError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"Wrote {args.out}/ in {time.monotonic() - started:.0f} s "
          f"({len(table.table)} areas, {int(table.table['probability_mean'].isna().sum())} without data).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
