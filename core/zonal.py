"""Exact pixel-area-weighted statistics of the cloud probability per small area (exactextract).

Each cell counts by the exact fraction of it that a polygon covers (exactextract's coverage
fractions); on a geographic grid the cells are weighted by their area as well. Zones are
reprojected to the raster's CRS. Zones without data get NULL (never 0); invalid geometries
are repaired (GEOS make_valid, every lobe kept) and reported with their area before and after,
empty ones reported and left NULL. Zones must be polygons.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field

import numpy as np

from .cache import remove_stale_parts
from .progress import NullProgress, Progress, check_cancel

# The reference product's statistics per area, coverage-weighted (exactextract), then what an
# analyst needs to trust them. Units in FIELD_UNITS (the GeoPackage's aliases, docs/method.md).
PROBABILITY_STATS = ["mean", "median", "min", "max", "stdev"]
COLUMNS = [f"probability_{s}" for s in PROBABILITY_STATS] + ["coverage_pct", "covered_cells"]
VALID_COLUMNS = [f"acquisition_count_{s}" for s in PROBABILITY_STATS] + ["probability_ci95_low", "probability_ci95_high"]
FIELD_UNITS = {
    "probability_mean": "Cloud probability, area-weighted mean (%)",
    "probability_median": "Cloud probability, area-weighted median (%)",
    "probability_min": "Cloud probability, minimum over the area's cells (%)",
    "probability_max": "Cloud probability, maximum over the area's cells (%)",
    "probability_stdev": "Cloud probability, area-weighted standard deviation over cells (percentage points)",
    "coverage_pct": "Share of the area's surface with data (%)",
    "covered_cells": "Cells with data, area-weighted (fractional count of cells)",
    "acquisition_count_mean": "Acquisitions per cell, area-weighted mean (count)",
    "acquisition_count_median": "Acquisitions per cell, area-weighted median (count)",
    "acquisition_count_min": "Acquisitions per cell, minimum (count)",
    "acquisition_count_max": "Acquisitions per cell, maximum (count)",
    "acquisition_count_stdev": "Acquisitions per cell, area-weighted standard deviation (count)",
    "probability_ci95_low": "Mean cloud probability, 95 % interval, lower end (%)",
    "probability_ci95_high": "Mean cloud probability, 95 % interval, upper end (%)",
}


class ZonalError(Exception):
    """Zonal statistics cannot be made; the message says why."""


def _is_null(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def zone_ids_problem(columns: dict, id_field: str, shown: int = 3) -> str | None:
    """Why the values of ``id_field`` cannot key the areas' table, or None when they can.

    ``columns`` maps each attribute field of the areas to its values, one per area (NULL as
    None). The table is joined back to the areas by this field, so a repeated or missing id
    would give rows that belong to several areas, or to none. These are refused rather than
    worked around: a key of our own would join to nothing the user has, and merging the areas
    that share an id would change what each row describes without a word. The message names
    the most repeated ids with their counts, and the fields of the layer that are unique.
    """
    from collections import Counter

    values = list(columns[id_field])
    nulls = sum(1 for v in values if _is_null(v))
    counts = Counter(str(v) for v in values if not _is_null(v))
    repeated = [(k, n) for k, n in counts.most_common() if n > 1]
    if not nulls and not repeated:
        return None
    parts = []
    if repeated:
        examples = ", ".join(f"'{k}' {n} times" for k, n in repeated[:shown]) + (" …" if len(repeated) > shown else "")
        parts.append(f"{len(values)} areas have only {len(counts)} distinct ids ({len(repeated)} repeated: "
                     f"{examples})")
    if nulls:
        parts.append(f"{nulls} area{'s have' if nulls > 1 else ' has'} no id (NULL)")
    unique = [name for name, column in columns.items() if name != id_field and _unique(column)]
    choose = (f" Fields of this layer with one value per area: {', '.join(unique[:8])}." if unique else "")
    return (f"The area id field '{id_field}' does not identify the areas: " + "; ".join(parts) + ". The table "
            "is joined back to the areas by this field, so each area needs an id of its own." + choose + " If several "
            "features make one area, dissolve them by the id first (Vector geometry > Dissolve).")


def _unique(column) -> bool:
    values = list(column)
    if any(_is_null(v) for v in values):
        return False
    try:
        return len(set(values)) == len(values)
    except TypeError:  # unhashable values (lists, maps): not a key anyone joins on
        return False


def not_polygons_message(kinds) -> str:
    """What to say when the areas are not (all) polygons; ``kinds`` their geometry type names."""
    return (f"The small areas must be polygons; this layer has {', '.join(sorted(kinds))} geometries. Statistics of a "
            "probability per point or line would be a value per cell touched, not per area.")


@dataclass
class ZonalResult:
    table: object  # pandas.DataFrame: the id column then COLUMNS (+ VALID_COLUMNS)
    invalid: list[str] = field(default_factory=list)  # "id (area a → b after repair)" of repaired geometries
    empty: list[str] = field(default_factory=list)  # ids without a geometry
    no_data: list[str] = field(default_factory=list)  # ids without a cell with data


def _published_band2(path: str) -> bool:
    """Whether ``path`` is the 2024 release's adjusted band 2 (cloudprob:smoothprobability, METHOD=2)."""
    import rasterio

    from .smoothing import PUBLISHED_TAG

    with rasterio.open(path) as ds:
        return ds.tags().get(PUBLISHED_TAG) == "2"


def _same_grid(a: str, b: str) -> bool:
    import rasterio

    with rasterio.open(a) as da, rasterio.open(b) as db:
        return (da.width, da.height, tuple(da.transform), da.crs) == (db.width, db.height, tuple(db.transform), db.crs)


def check_rasters(raster_path: str, valid_path: str | None = None, spread_path: str | None = None) -> None:
    """Raise :class:`ZonalError` unless the count and spread rasters, when given, lie on the
    probability raster's grid exactly, and the spread comes with the counts."""
    for other, what in ((valid_path, "acquisition-count"), (spread_path, "spread")):
        if other and not _same_grid(raster_path, other):
            raise ZonalError(f"The {what} raster is not on the probability raster's grid (size, transform and CRS).")
    if spread_path and not valid_path:
        raise ZonalError("The interval needs the acquisition counts (VALID) besides the spread.")


def mean_interval(mean, spread, count, z: float = 1.96):
    """(low, high) of a ``z`` interval of an area's mean probability (percent, clipped to 0–100).

    All cells of an area share the same acquisitions, so an area is not thousands of
    independent cells but about ``count`` observations (its mean acquisition count) of the
    whole area at once: the standard error is ``spread`` / √count, with ``spread`` the
    standard deviation of one observation (percent; the area mean of the per-cell spread from
    cloudprob:cloudfrequency, or √(p(100 − p)) for 0/1 observations). Treating the cells of an
    area as observing together is exact where clouds are larger than the area and errs wide
    otherwise; tests/test_calibration.py measures the coverage on independent years.
    """
    mean = np.asarray(mean, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        half = z * np.asarray(spread, dtype=np.float64) / np.sqrt(np.asarray(count, dtype=np.float64))
    return np.clip(mean - half, 0.0, 100.0), np.clip(mean + half, 0.0, 100.0)


def zonal_statistics(
    raster_path: str,
    zones,
    id_field: str,
    valid_path: str | None = None,
    progress: Progress | None = None,
    spread_path: str | None = None,
    batch_size: int = 2000,
    scheduler=None,
) -> ZonalResult:
    """Statistics of ``raster_path`` (band 1, percent; its no-data value is honoured) per zone.

    ``zones`` is a GeoDataFrame with a CRS. Columns (coverage-weighted, exactextract; on a
    geographic grid weighted by cell area too): ``probability_mean``, ``_median``, ``_min``,
    ``_max``, ``_stdev`` (population form); ``coverage_pct`` (percent of the zone's area with
    data) and ``covered_cells`` (sum of the covered fractions of cells with data). With
    ``valid_path`` (the acquisition count on the same grid): ``acquisition_count_mean`` …
    ``_stdev`` and a 95 % interval of the mean (:func:`mean_interval`), its spread from
    ``spread_path`` (cloudprob:cloudfrequency's spread raster) when given.

    Areas are worked in batches of ``batch_size``; ``scheduler`` runs the batches as Dask tasks
    (they read the rasters by path) with the same table as a result.
    """
    import geopandas as gpd
    import pandas as pd
    import rasterio

    progress = progress or NullProgress()
    if id_field not in zones.columns:
        raise ZonalError(f"The zones have no field '{id_field}'; fields: {', '.join(c for c in zones.columns if c != 'geometry')}.")
    if zones.crs is None:
        raise ZonalError("The zones have no coordinate reference system.")
    if not len(zones):
        raise ZonalError("The small-area layer has no features.")
    problem = zone_ids_problem({c: zones[c].tolist() for c in zones.columns if c != zones.geometry.name}, id_field)
    if problem:
        raise ZonalError(problem)
    check_rasters(raster_path, valid_path, spread_path)
    interval = bool(valid_path) and not _published_band2(valid_path)
    if valid_path and not interval:
        progress.warning(
            "The 'acquisition count' raster is the 2024 release's adjusted band 2 (as published): its "
            "acquisition_count_* columns describe that surface, not numbers of acquisitions, and the 95 % "
            "interval, which needs real counts, is left empty.")
        spread_path = None
    with rasterio.open(raster_path) as ds:
        crs, transform, raster_bounds = ds.crs, ds.transform, tuple(ds.bounds)
        geographic = ds.crs.is_geographic
        cell_area = abs(transform.a * transform.e)
    zones = zones.reset_index(drop=True)  # rows by position from here on
    ids = zones[id_field].astype(str)
    geoms = zones.geometry
    kinds = {g.geom_type for g in geoms if g is not None and not g.is_empty}
    if kinds - {"Polygon", "MultiPolygon"}:
        raise ZonalError(not_polygons_message(kinds))
    empty = [i for i, g in zip(ids, geoms) if g is None or g.is_empty]
    invalid, repaired = [], []
    for i, g in zip(ids, geoms):
        if g is not None and not g.is_empty and not g.is_valid:
            fixed = _make_valid_polygon(g)
            invalid.append(f"{i} (area {g.area:.6g} → {fixed.area:.6g} after repair)")
            repaired.append(fixed)
        else:
            repaired.append(g)
    work = gpd.GeoDataFrame({"_zone": ids.values}, geometry=repaired, crs=zones.crs)
    work = work[[g is not None and not g.is_empty for g in work.geometry]].to_crs(crs)  # index: the zones' rows
    if len(work):
        _check_overlap(work, raster_bounds, crs)
    check_cancel(progress)
    progress.set_progress(5.0)
    result = pd.DataFrame({id_field: ids.values}, index=zones.index)
    for column in COLUMNS + (VALID_COLUMNS if valid_path else []):
        result[column] = np.nan
    if len(work):
        if geographic:
            areas = work.to_crs(work.estimate_utm_crs()).area.values
            full = areas / _mean_cell_area_m2(raster_path)
        else:
            full = work.area.values / cell_area
        from .executor import executor_for

        # batches of areas: exactextract reads each area's window, and the cells it hands back
        # for the medians are those of one batch, never the raster's; on a Dask cluster each
        # batch is a task, and the parts are put together in the same order
        jobs = [(raster_path, valid_path, spread_path, work.iloc[start:start + batch_size], geographic, transform,
                 interval) for start in range(0, len(work), batch_size)]
        parts = []
        executor = executor_for(scheduler)
        try:
            for n, part in executor.map(_zonal_batch, jobs, progress):
                parts.append(part)
                progress.set_progress(5.0 + 85.0 * (n + 1) / len(jobs))
        finally:
            executor.close()
        stats = pd.concat(parts)
        stats["coverage_pct"] = np.where(full > 0, 100.0 * stats["covered_cells"].values / full, np.nan)
        for column in [c for c in result.columns if c != id_field]:
            if column in stats:  # by position, the areas' rows
                result.loc[stats.index, column] = stats[column].values
    # no cell with data: NULL, never 0
    no_cells = result["covered_cells"].isna() | (result["covered_cells"] <= 0)
    for column in [c for c in result.columns if c not in (id_field, "coverage_pct", "covered_cells")]:
        result.loc[no_cells, column] = np.nan
    result.loc[no_cells & result["coverage_pct"].notna(), "coverage_pct"] = 0.0
    result.loc[no_cells & result["covered_cells"].notna(), "covered_cells"] = 0.0
    no_data = [i for i, flag in zip(result[id_field], no_cells) if flag and i not in empty]
    progress.set_progress(100.0)
    return ZonalResult(result, invalid=invalid, empty=empty, no_data=no_data)


def _zonal_batch(job, progress=None):
    """The statistics of one batch of areas (a DataFrame on the batch's index)."""
    import pandas as pd
    from exactextract import exact_extract

    raster_path, valid_path, spread_path, batch, geographic, transform, interval = job
    part = _cell_statistics(raster_path, batch, "probability", geographic, transform)
    part["covered_cells"] = part.pop("probability_count")
    if valid_path:
        counts = _cell_statistics(valid_path, batch, "acquisition_count", geographic, transform)
        for s in PROBABILITY_STATS:
            part[f"acquisition_count_{s}"] = counts[f"acquisition_count_{s}"]
        if not interval:
            return pd.DataFrame(part, index=batch.index)
        mean = part["probability_mean"]
        if spread_path:
            weight = "(coverage_weight=area_spherical_m2)" if geographic else ""
            spread = exact_extract(spread_path, batch, [f"mean{weight}"], output="pandas").iloc[:, 0].values
        else:
            spread = np.sqrt(np.clip(mean, 0, 100) * (100.0 - np.clip(mean, 0, 100)))
        part["probability_ci95_low"], part["probability_ci95_high"] = mean_interval(
            mean, spread, part["acquisition_count_mean"])
    return pd.DataFrame(part, index=batch.index)


def _cell_statistics(path: str, zones, prefix: str, geographic: bool, transform) -> dict[str, np.ndarray]:
    """``<prefix>_mean``, ``_median``, ``_min``, ``_max``, ``_stdev`` (coverage-weighted; on a
    geographic grid by covered area) and ``_count`` (covered cells) of one raster per zone, all
    exactextract's own: its median too (the one the published 2024 table has), so the plugin has
    one definition of a median. exactextract's median of cells weighted by their coverage
    interpolates between distinct values ([1, 1, 2] with equal weights gives 1.5, not 1)."""
    from exactextract import exact_extract

    weight = "(coverage_weight=area_spherical_m2)" if geographic else ""
    names = ["mean", "median", "min", "max", "stdev", "count"]
    ops = [f"{name}{weight}" if name in ("mean", "median", "stdev") else name for name in names]
    table = exact_extract(path, zones, ops, output="pandas")
    return {f"{prefix}_{name}": table.iloc[:, k].to_numpy(float) for k, name in enumerate(names)}


def _check_overlap(work, raster_bounds: tuple, crs) -> None:
    """Zones none of which meets the raster's extent (elsewhere, or declared in a wrong CRS)
    would all be NULL with no word of why: an error naming both extents instead."""
    from shapely.geometry import box

    if work.intersects(box(*raster_bounds)).any():
        return
    span = ", ".join(f"{v:.6g}" for v in work.total_bounds)
    raster = ", ".join(f"{v:.6g}" for v in raster_bounds)
    raise ZonalError(
        f"None of the {len(work)} areas meets the probability raster: the areas span ({span}) and the raster "
        f"({raster}), in {crs.to_string()}. Check the areas' CRS and the raster.")


def _make_valid_polygon(geometry):
    """The polygonal part of GEOS's make_valid: a self-intersecting ring keeps every lobe
    (``buffer(0)`` keeps one: half the pixels, coverage still 100 %)."""
    from shapely.geometry import MultiPolygon, Polygon
    from shapely.validation import make_valid

    fixed = make_valid(geometry)
    if isinstance(fixed, (Polygon, MultiPolygon)):
        return fixed
    parts = []
    for part in getattr(fixed, "geoms", []):
        if isinstance(part, Polygon):
            parts.append(part)
        elif isinstance(part, MultiPolygon):
            parts.extend(part.geoms)
    return MultiPolygon(parts) if parts else Polygon()


def _mean_cell_area_m2(raster_path: str) -> float:
    import rasterio

    with rasterio.open(raster_path) as ds:
        lat = math.radians((ds.bounds.top + ds.bounds.bottom) / 2)
        return abs(ds.transform.a * ds.transform.e) * (111_320.0**2) * math.cos(lat)


def write_outputs(result: ZonalResult, zones, id_field: str, gpkg_path: str | None, csv_path: str | None,
                  layer: str = "small_areas") -> None:
    """The zones with their own attributes and their statistics as a GeoPackage layer (zones'
    CRS) and a CSV (no geometry; NULL as an empty field), each written to a temporary file and
    renamed. The result's rows are the zones' rows, in order; an attribute named like a
    statistic is kept as ``<name>_input``."""
    import geopandas as gpd

    table = result.table.reset_index(drop=True)
    for column in table.columns:
        if column != id_field:
            table[column] = table[column].astype(float).round(6)
    carried = [c for c in zones.columns if c not in (id_field, zones.geometry.name)]
    if carried:
        attributes = zones[carried].reset_index(drop=True)
        attributes.columns = [f"{c}_input" if c in table.columns else c for c in carried]
        table = table.iloc[:, :1].join(attributes).join(table.iloc[:, 1:])
    remove_stale_parts(csv_path, gpkg_path)  # left by a run killed while writing
    if csv_path:
        tmp = f"{csv_path}.part-{os.getpid()}"  # this run's own: two runs never write into one file
        table.to_csv(tmp, index=False, na_rep="")
        os.replace(tmp, csv_path)
    if gpkg_path:
        out = gpd.GeoDataFrame(table, geometry=list(zones.geometry.values), crs=zones.crs)
        tmp = f"{gpkg_path}.part-{os.getpid()}.gpkg"
        if os.path.exists(tmp):
            os.remove(tmp)
        out.to_file(tmp, layer=layer, driver="GPKG")
        _store_default_style(tmp, layer, list(out.columns))
        os.replace(tmp, gpkg_path)


def _store_default_style(gpkg_path: str, layer: str, columns: list[str]) -> None:
    """The fields' units as aliases in the GeoPackage's ``layer_styles`` table, the default
    style QGIS applies whenever the layer is opened (GDAL 3.6 does not store field aliases)."""
    from xml.sax.saxutils import quoteattr

    from osgeo import ogr

    fields = [c for c in columns if c != "geometry"]
    aliases = "".join(f"<alias field={quoteattr(c)} index=\"{i}\" name={quoteattr(FIELD_UNITS[c])}/>"
                      for i, c in enumerate(fields) if c in FIELD_UNITS)
    qml = ("<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>"
           f"<qgis version=\"3.22\" styleCategories=\"Fields\"><aliases>{aliases}</aliases></qgis>")
    ds = ogr.Open(gpkg_path, 1)
    if ds is None:
        raise ZonalError(f"Could not reopen {gpkg_path} to store the field units.")
    try:
        geometry_column = ds.GetLayerByName(layer).GetGeometryColumn() or "geom"
        styles = ds.CreateLayer("layer_styles", geom_type=ogr.wkbNone)
        for name, kind in (("f_table_catalog", ogr.OFTString), ("f_table_schema", ogr.OFTString),
                           ("f_table_name", ogr.OFTString), ("f_geometry_column", ogr.OFTString),
                           ("styleName", ogr.OFTString), ("styleQML", ogr.OFTString), ("styleSLD", ogr.OFTString),
                           ("useAsDefault", ogr.OFTInteger), ("description", ogr.OFTString),
                           ("owner", ogr.OFTString), ("ui", ogr.OFTString), ("update_time", ogr.OFTDateTime)):
            definition = ogr.FieldDefn(name, kind)
            if name == "useAsDefault":
                definition.SetSubType(ogr.OFSTBoolean)
            styles.CreateField(definition)
        feature = ogr.Feature(styles.GetLayerDefn())
        for name, value in (("f_table_catalog", ""), ("f_table_schema", ""), ("f_table_name", layer),
                            ("f_geometry_column", geometry_column), ("styleName", layer), ("styleQML", qml),
                            ("styleSLD", ""), ("description", "field units (Cloud Probability)"), ("owner", ""),
                            ("ui", "")):
            feature.SetField(name, value)
        feature.SetField("useAsDefault", 1)
        styles.CreateFeature(feature)
    finally:
        ds = None


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
    spread_path: str | None = None,
) -> ZonalResult:
    """:func:`zonal_statistics` in a separate Python process.

    exactextract's wheel bundles its own GEOS. Inside the QGIS and qgis_process executables,
    which link the system's GEOS into their global symbol scope, its C++ symbols resolve to the
    other GEOS version and it crashes; a plain Python process loads nothing of QGIS. Cancel
    stops the helper.
    """

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
        if spread_path:
            cmd += ["--spread", spread_path]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([plugin_parent] + [p for p in sys.path if p and os.path.isdir(p)])
        # its output goes to files, never to pipes nobody reads while it runs (a pipe holds 64 KB: a
        # helper writing more would block for good); its progress and warnings come as lines of stdout
        log_path, err_path = os.path.join(tmp, "stdout.txt"), os.path.join(tmp, "stderr.txt")
        with open(log_path, "w") as log, open(err_path, "w") as err:
            proc = subprocess.Popen(cmd + ["--report"], env=env, stdout=log, stderr=err, text=True)
        reader = _ReportReader(log_path, progress)
        try:
            while proc.poll() is None:
                if progress.is_canceled():
                    proc.kill()
                    proc.wait()
                    check_cancel(progress)
                reader.forward()
                time.sleep(0.1)
            reader.forward()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if proc.returncode != 0:
            with open(err_path, errors="replace") as fh:
                fh.seek(max(0, os.path.getsize(err_path) - 8192))
                lines = fh.read().strip().splitlines()
            message = lines[-1] if lines else f"exit code {proc.returncode}"
            raise ZonalError(f"Zonal statistics failed: {message}")
        with open(out) as fh:
            data = json.load(fh)
    table = pd.DataFrame(data["table"])
    table[id_field] = table[id_field].astype(str)
    progress.set_progress(100.0)
    return ZonalResult(table, data["invalid"], data["empty"], data["no_data"])


class _LineProgress(NullProgress):
    """The helper's progress and warnings as lines of its stdout, for :class:`_ReportReader`."""

    def set_progress(self, value: float) -> None:
        print(f"progress {float(value):.3f}", flush=True)

    def warning(self, message: str) -> None:
        print("warning " + json.dumps(message), flush=True)


class _ReportReader:
    """Reads the helper's report lines as they come and hands them to ``progress``."""

    def __init__(self, path: str, progress: Progress):
        self.path, self.progress, self.offset = path, progress, 0

    def forward(self) -> None:
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            chunk = fh.read()
        end = chunk.rfind(b"\n") + 1  # whole lines only; the rest next time
        self.offset += end
        for line in chunk[:end].decode("utf-8", "replace").splitlines():
            kind, _, rest = line.partition(" ")
            try:
                if kind == "progress":
                    self.progress.set_progress(min(99.0, float(rest)))
                elif kind == "warning":
                    self.progress.warning(json.loads(rest))
            except ValueError:
                continue  # not a report line


def main(argv=None) -> int:
    """``python -m cloud_probability.core.zonal RASTER ZONES.gpkg ID_FIELD OUT.json [--valid V]``."""
    import argparse


    import geopandas as gpd

    parser = argparse.ArgumentParser(description="Exact zonal statistics of a cloud probability raster.")
    parser.add_argument("raster")
    parser.add_argument("zones")
    parser.add_argument("id_field")
    parser.add_argument("out")
    parser.add_argument("--valid")
    parser.add_argument("--spread")
    parser.add_argument("--report", action="store_true", help="progress and warnings as lines of stdout")
    args = parser.parse_args(argv)
    zones = gpd.read_file(args.zones, layer="zones")
    try:
        result = zonal_statistics(args.raster, zones, args.id_field, args.valid, spread_path=args.spread,
                                  progress=_LineProgress() if args.report else None)
    except ZonalError as exc:
        raise SystemExit(str(exc)) from exc
    table = result.table.astype(object).where(result.table.notna(), None)
    with open(args.out, "w") as fh:
        json.dump({"table": table.to_dict(orient="list"), "invalid": result.invalid, "empty": result.empty,
                   "no_data": result.no_data}, fh)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
