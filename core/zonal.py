"""Exact pixel-area-weighted statistics of the cloud probability per small area (exactextract).

Each cell counts by the exact fraction of it that a polygon covers (exactextract's coverage
fractions); on a geographic grid the cells are weighted by their area as well. Zones are
reprojected to the raster's CRS. Zones without data get NULL (never 0); invalid geometries
are repaired and reported, empty ones reported and left NULL.
"""
from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field

import numpy as np

from .progress import NullProgress, Progress, check_cancel

COLUMNS = ["cloud_prob_mean", "min", "max", "stdev", "coverage_pct", "pixel_count"]
VALID_COLUMNS = ["valid_obs_mean", "ci95_low", "ci95_high"]


class ZonalError(Exception):
    """Zonal statistics cannot be made; the message says why."""


@dataclass
class ZonalResult:
    table: object  # pandas.DataFrame: the id column then COLUMNS (+ VALID_COLUMNS)
    invalid: list[str] = field(default_factory=list)  # ids whose geometry had to be repaired
    empty: list[str] = field(default_factory=list)  # ids without a geometry
    no_data: list[str] = field(default_factory=list)  # ids without a cell with data


def zonal_statistics(
    raster_path: str,
    zones,
    id_field: str,
    valid_path: str | None = None,
    progress: Progress | None = None,
) -> ZonalResult:
    """Statistics of ``raster_path`` (band 1; its no-data value is honoured) per zone.

    ``zones`` is a GeoDataFrame with a CRS. Columns: ``cloud_prob_mean`` (coverage-weighted),
    ``min``, ``max``, ``stdev`` (coverage-weighted), ``coverage_pct`` (percent of the zone's
    area with data), ``pixel_count`` (sum of the covered fractions of cells with data); with
    ``valid_path`` also ``valid_obs_mean`` and a 95 % interval of the mean probability from
    each cell's binomial sampling error, cells taken as independent (a lower bound on the
    uncertainty: clouds are correlated in space).
    """
    import geopandas as gpd
    import pandas as pd
    import rasterio
    from exactextract import exact_extract

    progress = progress or NullProgress()
    if id_field not in zones.columns:
        raise ZonalError(f"The zones have no field '{id_field}'; fields: {', '.join(c for c in zones.columns if c != 'geometry')}.")
    if zones.crs is None:
        raise ZonalError("The zones have no coordinate reference system.")
    with rasterio.open(raster_path) as ds:
        crs, transform, nodata = ds.crs, ds.transform, ds.nodata
        geographic = ds.crs.is_geographic
        cell_area = abs(transform.a * transform.e)
    ids = zones[id_field].astype(str)
    geoms = zones.geometry
    empty = [i for i, g in zip(ids, geoms) if g is None or g.is_empty]
    invalid = [i for i, g in zip(ids, geoms) if g is not None and not g.is_empty and not g.is_valid]
    work = gpd.GeoDataFrame({"_zone": ids.values}, geometry=[
        (g.buffer(0) if (g is not None and not g.is_empty and not g.is_valid) else g) for g in geoms
    ], crs=zones.crs)
    work = work[[g is not None and not g.is_empty for g in work.geometry]].to_crs(crs)
    check_cancel(progress)
    progress.set_progress(5.0)
    result = pd.DataFrame({id_field: ids.values})
    for column in COLUMNS + (VALID_COLUMNS if valid_path else []):
        result[column] = np.nan
    if len(work):
        weight = "(coverage_weight=area_spherical_m2)" if geographic else ""
        ops = [f"mean{weight}", "min", "max", f"stdev{weight}", "count"]
        stats = exact_extract(raster_path, work, ops, include_cols=["_zone"], output="pandas")
        progress.set_progress(60.0)
        stats.columns = ["_zone", "cloud_prob_mean", "min", "max", "stdev", "pixel_count"]
        if geographic:
            areas = work.to_crs(work.estimate_utm_crs()).area.values
            cell = _mean_cell_area_m2(raster_path)
            full = areas / cell
        else:
            full = work.area.values / cell_area
        stats["coverage_pct"] = np.where(full > 0, 100.0 * stats["pixel_count"].values / full, np.nan)
        if valid_path:
            check_cancel(progress)
            stats = stats.join(_valid_columns(raster_path, valid_path, work, nodata, stats, weight), how="left")
        progress.set_progress(90.0)
        stats = stats.set_index("_zone")
        for column in [c for c in result.columns if c != id_field]:
            result[column] = result[id_field].map(stats[column]) if column in stats else np.nan
    # no cell with data: NULL, never 0
    no_cells = result["pixel_count"].isna() | (result["pixel_count"] <= 0)
    for column in [c for c in result.columns if c not in (id_field, "coverage_pct", "pixel_count")]:
        result.loc[no_cells, column] = np.nan
    result.loc[no_cells & result["coverage_pct"].notna(), "coverage_pct"] = 0.0
    result.loc[no_cells & result["pixel_count"].notna(), "pixel_count"] = 0.0
    no_data = [i for i, flag in zip(result[id_field], no_cells) if flag and i not in empty]
    progress.set_progress(100.0)
    return ZonalResult(result, invalid=invalid, empty=empty, no_data=no_data)


def _mean_cell_area_m2(raster_path: str) -> float:
    import rasterio

    with rasterio.open(raster_path) as ds:
        lat = math.radians((ds.bounds.top + ds.bounds.bottom) / 2)
        return abs(ds.transform.a * ds.transform.e) * (111_320.0**2) * math.cos(lat)


def _valid_columns(raster_path, valid_path, work, nodata, stats, weight):
    """valid_obs_mean, and the interval of the mean from per-cell binomial variance."""
    import pandas as pd
    import rasterio
    from exactextract import exact_extract

    with rasterio.open(raster_path) as dp, rasterio.open(valid_path) as dv:
        if (dp.width, dp.height) != (dv.width, dv.height) or not np.allclose(tuple(dp.transform), tuple(dv.transform)):
            raise ZonalError("The valid-count raster is not on the probability raster's grid.")
        profile = dp.profile.copy()
        p = dp.read(1).astype(np.float64)
        n = dv.read(1).astype(np.float64)
    bad = (p == nodata) if nodata is not None else np.zeros(p.shape, bool)
    bad |= ~np.isfinite(p) | (n <= 0)
    var = np.where(bad, -1.0, np.clip(p, 0, 100) * (100 - np.clip(p, 0, 100)) / np.maximum(n, 1))
    tmp = tempfile.NamedTemporaryFile(suffix=".tif", delete=False).name
    try:
        profile.update(dtype="float32", nodata=-1.0, count=1, compress="DEFLATE")
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(var.astype(np.float32)[None])
        var_stats = exact_extract(tmp, work, [f"mean{weight}"], include_cols=["_zone"], output="pandas")
        valid_stats = exact_extract(valid_path, work, [f"mean{weight}"], include_cols=["_zone"], output="pandas")
    finally:
        os.remove(tmp)
    count = stats["pixel_count"].values
    half = 1.96 * np.sqrt(var_stats.iloc[:, 1].values / np.where(count > 0, count, np.nan))
    mean = stats["cloud_prob_mean"].values
    return pd.DataFrame({
        "valid_obs_mean": valid_stats.iloc[:, 1].values,
        "ci95_low": np.clip(mean - half, 0, 100),
        "ci95_high": np.clip(mean + half, 0, 100),
    }, index=stats.index)


def write_outputs(result: ZonalResult, zones, id_field: str, gpkg_path: str | None, csv_path: str | None,
                  layer: str = "small_areas") -> None:
    """The zones with their statistics as a GeoPackage layer (zones' CRS) and a CSV (no
    geometry; NULL as an empty field), each written to a temporary file and renamed."""
    import geopandas as gpd

    table = result.table.copy()
    for column in table.columns:
        if column != id_field:
            table[column] = table[column].astype(float).round(6)
    if csv_path:
        tmp = f"{csv_path}.part"
        table.to_csv(tmp, index=False, na_rep="")
        os.replace(tmp, csv_path)
    if gpkg_path:
        out = gpd.GeoDataFrame(table, geometry=list(zones.geometry.values), crs=zones.crs)
        tmp = f"{gpkg_path}.part.gpkg"
        if os.path.exists(tmp):
            os.remove(tmp)
        out.to_file(tmp, layer=layer, driver="GPKG")
        os.replace(tmp, gpkg_path)


def python_executable() -> str:
    """A Python interpreter for helper processes: inside QGIS ``sys.executable`` is QGIS itself."""
    import shutil
    import sys

    name = os.path.basename(sys.executable).lower()
    if name.startswith("python"):
        return sys.executable
    candidates = [
        os.path.join(sys.exec_prefix, "python.exe"),  # OSGeo4W / Windows installers
        os.path.join(sys.exec_prefix, "bin", f"python{sys.version_info.major}.{sys.version_info.minor}"),
        os.path.join(sys.exec_prefix, "bin", "python3"),
        shutil.which("python3") or "",
    ]
    for path in candidates:
        if path and os.path.exists(path):
            return path
    raise ZonalError("No Python interpreter found to run exactextract in.")


def zonal_statistics_in_process(
    raster_path: str, zones, id_field: str, valid_path: str | None = None, progress: Progress | None = None,
) -> ZonalResult:
    """:func:`zonal_statistics` in a separate Python process.

    exactextract's wheel bundles its own GEOS. Inside the QGIS and qgis_process executables,
    which link the system's GEOS into their global symbol scope, its C++ symbols resolve to the
    other GEOS version and it crashes; a plain Python process loads nothing of QGIS. Cancel
    stops the helper.
    """
    import json
    import subprocess
    import sys
    import time

    import pandas as pd

    progress = progress or NullProgress()
    package = __package__.rsplit(".", 1)[0]  # "cloud_probability" however the plugin folder is named
    plugin_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with tempfile.TemporaryDirectory(prefix="cloudprob-zonal-") as tmp:
        zones_path = os.path.join(tmp, "zones.gpkg")
        zones[[id_field, "geometry"]].to_file(zones_path, layer="zones", driver="GPKG")
        out = os.path.join(tmp, "result.json")
        cmd = [python_executable(), "-m", f"{package}.core.zonal", raster_path, zones_path, id_field, out]
        if valid_path:
            cmd += ["--valid", valid_path]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([plugin_parent] + [p for p in sys.path if p and os.path.isdir(p)])
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            while proc.poll() is None:
                if progress.is_canceled():
                    proc.kill()
                    proc.wait()
                    check_cancel(progress)
                time.sleep(0.1)
            stdout, stderr = proc.communicate()
        finally:
            if proc.poll() is None:
                proc.kill()
        if proc.returncode != 0:
            lines = (stderr or stdout or "").strip().splitlines()
            message = lines[-1] if lines else f"exit code {proc.returncode}"
            raise ZonalError(f"Zonal statistics failed: {message}")
        with open(out) as fh:
            data = json.load(fh)
    table = pd.DataFrame(data["table"])
    table[id_field] = table[id_field].astype(str)
    progress.set_progress(100.0)
    return ZonalResult(table, data["invalid"], data["empty"], data["no_data"])


def main(argv=None) -> int:
    """``python -m cloud_probability.core.zonal RASTER ZONES.gpkg ID_FIELD OUT.json [--valid V]``."""
    import argparse
    import json

    import geopandas as gpd

    parser = argparse.ArgumentParser(description="Exact zonal statistics of a cloud probability raster.")
    parser.add_argument("raster")
    parser.add_argument("zones")
    parser.add_argument("id_field")
    parser.add_argument("out")
    parser.add_argument("--valid")
    args = parser.parse_args(argv)
    zones = gpd.read_file(args.zones, layer="zones")
    try:
        result = zonal_statistics(args.raster, zones, args.id_field, args.valid)
    except ZonalError as exc:
        raise SystemExit(str(exc)) from exc
    table = result.table.astype(object).where(result.table.notna(), None)
    with open(args.out, "w") as fh:
        json.dump({"table": table.to_dict(orient="list"), "invalid": result.invalid, "empty": result.empty,
                   "no_data": result.no_data}, fh)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
