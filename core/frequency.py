"""Per-pixel cloud probability over a period: valid and cloudy observation counts on one grid.

The output grid is worked in tiles; for each tile every acquisition (datatake) touching it
contributes one observation per pixel: its products are combined (newest baseline first,
each filling only the pixels still without data), so MGRS overlaps, split datastrips and
reprocessed duplicates never count twice, whatever UTM zone they come in. Only counters are
kept (uint16 per period), never a stack of scenes, so memory does not grow with the number of
scenes or the size of the area.

Each finished tile is saved in a cache folder keyed by the inputs; a run that is cancelled or
crashes resumes from the finished tiles, and the output rasters are written only at the end
(temporary files renamed into place), so nothing half-written is ever left behind.
"""
from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from .masks import CLOUD, NODATA, SHADOW, MaskError, MaskSpec
from .progress import NullProgress, Progress, check_cancel
from .reading import Grid, GridLookup, ReadError, area_in_crs, gdal_http_env, network_bytes, network_bytes_reset
from .screening import datatake_mask_on_grid, group_by_datatake
from .stac import Scene, parse_datetime

CACHE_VERSION = 1  # bump when tile results change for the same inputs
PROBABILITY_NODATA = -9999.0


class FrequencyError(Exception):
    """The counts cannot be made; the message says why (finished tiles are kept for a re-run)."""


@dataclass(frozen=True)
class Period:
    """A band of the output: observations with ``start <= time < end`` (UTC); None = open."""

    label: str
    start: datetime | None = None
    end: datetime | None = None

    def contains(self, when: datetime) -> bool:
        return (self.start is None or when >= self.start) and (self.end is None or when < self.end)


def periods_for(mode: str, scenes: list[Scene]) -> list[Period]:
    """``all``: one band for the whole period; ``month``: one band per calendar month the scenes span."""
    if mode == "all":
        return [Period("all")]
    if mode != "month":
        raise ValueError(f"unknown period mode {mode!r}")
    times = sorted(parse_datetime(s.datetime) for s in scenes)
    if not times:
        return []
    out = []
    year, month = times[0].year, times[0].month
    while (year, month) <= (times[-1].year, times[-1].month):
        start = datetime(year, month, 1, tzinfo=times[0].tzinfo)
        nyear, nmonth = (year + 1, 1) if month == 12 else (year, month + 1)
        out.append(Period(f"{year:04d}-{month:02d}", start, datetime(nyear, nmonth, 1, tzinfo=times[0].tzinfo)))
        year, month = nyear, nmonth
    return out


def grid_for_area(bounds: tuple[float, float, float, float], crs, resolution: float) -> Grid:
    """A north-up grid of ``resolution`` metres covering ``bounds`` (in ``crs``), its edges on
    multiples of the resolution (so grids of neighbouring runs line up)."""
    from rasterio.transform import Affine

    xmin, ymin, xmax, ymax = bounds
    x0 = math.floor(xmin / resolution) * resolution
    y1 = math.ceil(ymax / resolution) * resolution
    cols = max(1, int(math.ceil((xmax - x0) / resolution - 1e-9)))
    rows = max(1, int(math.ceil((y1 - ymin) / resolution - 1e-9)))
    return Grid(crs, Affine(resolution, 0.0, x0, 0.0, -resolution, y1), (rows, cols))


def utm_epsg(lon: float, lat: float) -> int:
    """EPSG code of the WGS 84 / UTM zone containing (lon, lat)."""
    zone = min(60, max(1, int(math.floor((lon + 180.0) / 6.0)) + 1))
    return (32600 if lat >= 0 else 32700) + zone


@dataclass
class FrequencyResult:
    probability: str
    valid: str
    cloudy: str
    periods: list[Period]
    acquisitions: int
    scenes: int
    pixel_observations: int  # output pixels × acquisitions that had valid data there
    tiles: int
    tiles_resumed: int
    seconds: float
    bytes_fetched: int
    stats: dict = field(default_factory=dict)


def _tiles(grid: Grid, tile_px: int):
    rows, cols = grid.shape
    for r0 in range(0, rows, tile_px):
        for c0 in range(0, cols, tile_px):
            yield r0, c0, min(tile_px, rows - r0), min(tile_px, cols - c0)


def _sub_grid(grid: Grid, r0: int, c0: int, h: int, w: int, halo: int = 0) -> Grid:
    from rasterio.transform import Affine

    t = grid.transform
    x0 = t.c + (c0 - halo) * t.a
    y0 = t.f + (r0 - halo) * t.e
    return Grid(grid.crs, Affine(t.a, t.b, x0, t.d, t.e, y0), (h + 2 * halo, w + 2 * halo))


def _footprint(grid: Grid):
    from shapely.geometry import box

    t = grid.transform
    rows, cols = grid.shape
    xs = (t.c, t.c + cols * t.a)
    ys = (t.f + rows * t.e, t.f)
    return box(min(xs), min(ys), max(xs), max(ys))


def _cache_key(groups, grid: Grid, spec: MaskSpec, periods: list[Period], tile_px: int) -> str:
    from pyproj import CRS

    h = hashlib.sha256()
    payload = {
        "version": CACHE_VERSION,
        "grid": [CRS.from_user_input(grid.crs).to_wkt(), list(grid.transform)[:6], list(grid.shape)],
        "spec": {k: v for k, v in asdict(spec).items() if k != "extra"},
        "periods": [(p.label, str(p.start), str(p.end)) for p in periods],
        "tile_px": tile_px,
        "scenes": sorted((s.item_id, json.dumps(s.assets, sort_keys=True)) for g in groups for s in g),
    }
    h.update(json.dumps(payload, sort_keys=True, default=str).encode())
    return h.hexdigest()[:24]


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cloud_probability" / "frequency"


def cloud_frequency(
    scenes: list[Scene],
    grid: Grid,
    spec: MaskSpec,
    outputs: dict[str, str],
    periods: list[Period] | None = None,
    tile_px: int = 2048,
    concurrency: int = 4,
    cache_dir: str | Path | None = None,
    progress: Progress | None = None,
) -> FrequencyResult:
    """Count valid and cloudy observations of ``scenes`` on ``grid`` and write the rasters.

    ``outputs`` maps ``probability`` (float32 percent, no data where no valid observation),
    ``valid`` and ``cloudy`` (uint16 counts) to file paths; one band per period. Cloudy means
    the mask's cloud class, and cloud shadows too with ``spec.count_shadows``.

    Memory is about ``concurrency`` × 60 MB plus 250 MB per ``tile_px`` = 2048 tile, whatever
    the number of scenes or the size of the grid. Decoding is CPU work: on a local or nearby
    server about twice the number of cores is fastest; a distant server wants more threads.
    """
    progress = progress or NullProgress()
    started = time.monotonic()
    periods = periods or [Period("all")]
    if len(periods) > 400:
        raise FrequencyError(f"{len(periods)} periods is too many bands.")
    groups = []
    for group in group_by_datatake(scenes):
        when = min(parse_datetime(s.datetime) for s in group)
        band = next((i for i, p in enumerate(periods) if p.contains(when)), None)
        if band is not None:
            groups.append((group, band))
    if not groups:
        raise FrequencyError("No scenes fall in the period.")
    if len(groups) > np.iinfo(np.uint16).max:
        raise FrequencyError("More than 65535 acquisitions: split the period.")

    from shapely.geometry import shape
    from shapely.ops import unary_union
    from shapely.prepared import prep

    footprints = []
    for group, _ in groups:
        geoms = [shape(s.geometry) for s in group if s.geometry]
        footprints.append(prep(unary_union(geoms)) if geoms else None)

    key = _cache_key([g for g, _ in groups], grid, spec, periods, tile_px)
    cache = Path(cache_dir or default_cache_dir()) / key
    cache.mkdir(parents=True, exist_ok=True)
    tiles = list(_tiles(grid, tile_px))
    halo = int(math.ceil(spec.buffer_m / grid.resolution)) if spec.buffer_m > 0 else 0
    grid_epsg = _epsg_of(grid.crs)
    resumed = 0
    pixel_obs = 0
    network_bytes_reset()
    cloudy_lut = np.zeros(256, np.uint8)  # mask class -> counts as cloudy
    cloudy_lut[CLOUD] = 1
    if spec.count_shadows:
        cloudy_lut[SHADOW] = 1

    def tile_groups(tile_grid: Grid):
        area = _footprint(tile_grid)
        area_ll = area_in_crs(area, grid_epsg, 4326) if grid_epsg else None
        chosen = []
        for (group, band), fp in zip(groups, footprints):
            if fp is None or area_ll is None or fp.intersects(area_ll):
                chosen.append((group, band))
        return chosen

    def observe_tile(tile_grid: Grid, lookup: GridLookup, group: list[Scene]):
        check_cancel(progress)
        with gdal_http_env():
            return datatake_mask_on_grid(group, spec, tile_grid, lookup)

    pool = cf.ThreadPoolExecutor(max_workers=max(1, int(concurrency)), thread_name_prefix="cloudprob-freq")
    try:
        for n, (r0, c0, h, w) in enumerate(tiles):
            check_cancel(progress)
            path = cache / f"tile_{r0}_{c0}.npz"
            if path.exists():
                with np.load(path) as done:
                    pixel_obs += int(done["pixel_obs"])
                resumed += 1
                progress.set_progress(95.0 * (n + 1) / len(tiles))
                continue
            tile_grid = _sub_grid(grid, r0, c0, h, w, halo)
            lookup = GridLookup(tile_grid)
            valid = np.zeros((len(periods), h, w), np.uint16)
            cloudy = np.zeros((len(periods), h, w), np.uint16)
            chosen = tile_groups(tile_grid)
            futures = {pool.submit(observe_tile, tile_grid, lookup, g): (g, b) for g, b in chosen}
            errors = []
            for k, future in enumerate(cf.as_completed(futures), start=1):
                group, band = futures[future]
                try:
                    mask = future.result()
                except (ReadError, MaskError) as exc:
                    errors.append(f"{', '.join(s.item_id for s in group)}: {exc}")
                    continue
                if halo:
                    mask = mask[halo:-halo, halo:-halo]
                np.add(valid[band], mask != NODATA, out=valid[band], casting="unsafe")
                np.add(cloudy[band], np.take(cloudy_lut, mask), out=cloudy[band], casting="unsafe")
                progress.set_progress(95.0 * (n + k / max(1, len(futures))) / len(tiles))
            if errors:
                raise FrequencyError(
                    f"{len(errors)} acquisition(s) could not be read (finished tiles are kept; a re-run resumes): "
                    + "; ".join(errors[:5])
                )
            tmp = path.with_suffix(".part.npz")
            tile_obs = int(valid.sum(dtype=np.int64))
            np.savez_compressed(tmp, valid=valid, cloudy=cloudy, pixel_obs=np.int64(tile_obs))
            os.replace(tmp, path)
            pixel_obs += tile_obs
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)

    check_cancel(progress)
    stats = _write_outputs(grid, tiles, cache, periods, outputs, spec, len(groups))
    shutil.rmtree(cache, ignore_errors=True)
    progress.set_progress(100.0)
    return FrequencyResult(
        probability=outputs["probability"], valid=outputs["valid"], cloudy=outputs["cloudy"], periods=periods,
        acquisitions=len(groups), scenes=sum(len(g) for g, _ in groups), pixel_observations=pixel_obs,
        tiles=len(tiles), tiles_resumed=resumed, seconds=time.monotonic() - started,
        bytes_fetched=network_bytes(), stats=stats,
    )


def _epsg_of(crs) -> int | None:
    from pyproj import CRS

    return CRS.from_user_input(crs).to_epsg()


def _write_outputs(grid: Grid, tiles, cache: Path, periods, outputs: dict[str, str], spec: MaskSpec, n_acq: int) -> dict:
    """Assemble the three rasters from the tile files; temporary files renamed at the end."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.windows import Window

    rows, cols = grid.shape
    bands = len(periods)
    tiled = rows >= 256 and cols >= 256
    common = dict(driver="GTiff", width=cols, height=rows, count=bands, crs=grid.crs, transform=grid.transform,
                  compress="DEFLATE", BIGTIFF="IF_SAFER")
    if tiled:
        common.update(tiled=True, blockxsize=256, blockysize=256)
    tmp = {k: f"{v}.part-{os.getpid()}.tif" for k, v in outputs.items()}
    spec_text = json.dumps({k: v for k, v in asdict(spec).items() if k != "extra"})
    total_valid = np.zeros(bands, np.float64)
    total_cloudy = np.zeros(bands, np.float64)
    try:
        with rasterio.open(tmp["valid"], "w", dtype="uint16", predictor=2, **common) as dv, \
                rasterio.open(tmp["cloudy"], "w", dtype="uint16", predictor=2, **common) as dc, \
                rasterio.open(tmp["probability"], "w", dtype="float32", nodata=PROBABILITY_NODATA, predictor=3, **common) as dp:
            for r0, c0, h, w in tiles:
                with np.load(cache / f"tile_{r0}_{c0}.npz") as done:
                    valid, cloudy = done["valid"], done["cloudy"]
                window = Window(c0, r0, w, h)
                dv.write(valid, window=window)
                dc.write(cloudy, window=window)
                with np.errstate(invalid="ignore", divide="ignore"):
                    prob = np.where(valid > 0, 100.0 * cloudy / np.maximum(valid, 1), PROBABILITY_NODATA).astype(np.float32)
                dp.write(prob, window=window)
                total_valid += valid.reshape(bands, -1).sum(axis=1)
                total_cloudy += cloudy.reshape(bands, -1).sum(axis=1)
            for ds, units in ((dv, "observations"), (dc, "observations"), (dp, "percent")):
                for i, p in enumerate(periods, start=1):
                    ds.set_band_description(i, p.label)
                ds.update_tags(units=units, mask=spec_text, acquisitions=str(n_acq), software="cloud_probability")
            # QGIS draws rasters under ~4000 px fine without pyramids; larger ones get them
            factors = [f for f in (2, 4, 8, 16, 32, 64) if min(rows, cols) // f >= 256] if min(rows, cols) >= 4096 else []
            if factors:
                dv.build_overviews(factors, Resampling.nearest)
                dc.build_overviews(factors, Resampling.nearest)
                dp.build_overviews(factors, Resampling.average)
        for k in ("valid", "cloudy", "probability"):
            os.replace(tmp[k], outputs[k])
    finally:
        for path in tmp.values():
            if os.path.exists(path):
                os.remove(path)
    return {
        "mean_probability_pct": [float(100 * c / v) if v else None for c, v in zip(total_cloudy, total_valid)],
        "valid_observations": [int(v) for v in total_valid],
    }
