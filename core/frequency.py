"""Per-pixel cloud probability over a period: valid and cloudy observation counts on one grid.

Two measures, both kept with their observation count (:data:`MEASURES`):

* ``frequency``: cloudy / valid observations, cloudy = the mask's cloud class (SCL 8, 9, 10 by
  default), valid = every SCL class but no data and defective (0, 1);
* ``mean_probability`` (the reference product's): the mean of a probability asset (Earth Search
  Collection 1's ``cloud``, Sen2Cor's cloud probability, 0–100 %) over the observations whose SCL
  has data (not class 0). The asset declares ``nodata: 0``, but 0 % is a real value: validity
  comes from the SCL alone. Stored as valid = count and cloudy = Σ p/100 (expected cloudy
  observations), so that probability = 100·cloudy/valid for both measures.

The output grid is worked in tiles; for each tile every acquisition (datatake) touching it
contributes one observation per pixel: its products are combined (newest baseline first,
each filling only the pixels still without data), so MGRS overlaps, split datastrips and
reprocessed duplicates never count twice, whatever UTM zone they come in. Only counters are
kept (uint16 per period), never a stack of scenes, so memory does not grow with the number of
scenes or the size of the area.

Each finished tile is saved in a cache folder keyed by the grid and the way of counting, under a
name made of what the tile read; a run that is cancelled or crashes resumes from the finished
tiles, a run with an edited scene list resumes every tile the edit does not touch, and the output rasters are written only at the end
(temporary files renamed into place), so nothing half-written is ever left behind.
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import hashlib
import json
import math
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from . import http
from .cache import TileCache, remove_stale_parts
from .masks import CLOUD, NODATA, SHADOW, MaskError, MaskSpec
from .progress import NullProgress, Progress, check_cancel, finished
from .rasters import NODATA as RASTER_NODATA, add_overviews, atomic, geotiff_profile
from .reading import (
    Grid, GridLookup, ReadError, area_in_crs, classes_on_grid, gdal_http_env, network_bytes, network_bytes_reset,
    read_on_grid,
)
from .screening import datatake_mask_on_grid, group_by_datatake
from .stac import Scene, parse_datetime

CACHE_VERSION = 2  # bump when tile results change for the same inputs
PROBABILITY_NODATA = RASTER_NODATA["float32"]
MEASURES = ("frequency", "mean_probability")
MEAN_NODATA_CLASSES = (0,)  # the mean measure's own rule: only SCL "no data" is no observation
# What one observation of a pixel is: "datatake", one per acquisition (its products combined, the
# documented method); "product", one per STAC item, items of the same datetime fused band by band
# (what odc.stac.load does by default, and so the 2024 release's published code: docs/variants.md)
OBSERVATIONS = ("datatake", "product")


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


def group_by_product(scenes: list[Scene]) -> list[list[Scene]]:
    """One group per STAC datetime, as odc.stac.load groups items by default (``groupby="time"``):
    items of exactly the same datetime are one layer, ordered by item id within it (its order for
    fusing), every other item is a layer of its own; layers oldest first."""
    groups: dict[datetime, list[Scene]] = {}
    for scene in scenes:
        groups.setdefault(parse_datetime(scene.datetime), []).append(scene)
    return [sorted(groups[when], key=lambda s: s.item_id) for when in sorted(groups)]


def observation_id(group: list[Scene], observations: str = "datatake") -> str:
    """The name of one observation (a group of products) in warnings, caches and unreadable lists."""
    if observations == "product":
        return "+".join(s.item_id for s in group)
    return group[0].datatake_id


def _check_one_year_per_band(groups, periods: list[Period]) -> None:
    """The 2024 release's code makes one layer per calendar year (``groupby("time.year")``): counting
    as it does, a band across two years would be a number it never makes."""
    for band, period in enumerate(periods):
        years = sorted({parse_datetime(s.datetime).year for g, b in groups if b == band for s in g})
        if len(years) > 1:
            raise FrequencyError(
                f"Counting one observation per product, as the 2024 release's code does, makes one layer per calendar "
                f"year; the scenes of band '{period.label}' span {years[0]}–{years[-1]}. Search scenes within one "
                "calendar year (e.g. 2024-01-01 to 2024-12-31), or count one observation per acquisition.")


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
    measure: str
    acquisitions: int
    scenes: int
    pixel_observations: int  # output pixels × acquisitions that had valid data there
    tiles: int
    tiles_resumed: int
    seconds: float
    bytes_fetched: int
    stats: dict = field(default_factory=dict)
    unreadable: dict = field(default_factory=dict)  # datatake id -> what failed (left out of every tile)
    unreadable_csv: str | None = None


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


def _cache_key(grid: Grid, spec: MaskSpec, periods: list[Period], tile_px: int, measure) -> str:
    """The cache folder of a grid and a way of counting; which scenes a tile read is in the
    tile's own name (:func:`_tile_key`), so editing the scene list keeps every other tile."""
    from pyproj import CRS

    h = hashlib.sha256()
    payload = {
        "version": CACHE_VERSION,
        "measure": measure,
        "grid": [CRS.from_user_input(grid.crs).to_wkt(), list(grid.transform)[:6], list(grid.shape)],
        "spec": {k: v for k, v in asdict(spec).items() if k != "extra"},
        "periods": [(p.label, str(p.start), str(p.end)) for p in periods],
        "tile_px": tile_px,
    }
    h.update(json.dumps(payload, sort_keys=True, default=str).encode())
    return h.hexdigest()[:24]


def _check_overlap(grid: Grid, footprints: dict) -> None:
    """Refuse an area that no product's footprint meets: it would give rasters of no data
    everywhere, with no word of why (products without a footprint may cover it: not refused)."""
    if not footprints or any(f is None for f in footprints.values()):
        return
    epsg = _epsg_of(grid.crs)
    if not epsg:
        return
    area = area_in_crs(_footprint(grid), epsg, 4326)
    if any(f.intersects(area) for f in footprints.values()):
        return
    west, south, east, north = (round(v, 4) for v in area.bounds)
    raise FrequencyError(
        f"The area ({west}, {south}, {east}, {north} in longitude/latitude) lies outside the footprint of every one "
        f"of the {len(footprints)} scenes: no scene covers it, so every pixel would be no data. Check the area's "
        "coordinates and CRS, or search scenes for this area.")


def _tile_key(chosen) -> str:
    """What one tile reads: each acquisition's products (ids and hrefs) and its band."""
    payload = sorted((band, sorted((s.item_id, json.dumps(s.assets, sort_keys=True)) for s in group))
                     for group, band in chosen)
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:16]


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cloud_probability" / "frequency"


def datatake_probability_on_grid(
    products: list[Scene], grid: Grid, lookup: GridLookup, asset: str = "cloud",
    nodata_classes: tuple[int, ...] = MEAN_NODATA_CLASSES,
) -> tuple[np.ndarray, np.ndarray]:
    """One acquisition's observation of a probability asset on ``grid``: (valid, percent).

    ``valid`` (bool) is where a product's SCL is not one of ``nodata_classes``; ``percent``
    (0–100; 0 where not valid) is the asset's value there, taken from the same product, in the
    asset's own integer type when it has one (Earth Search's ``cloud`` is uint8), else float32. Products in order
    (newest baseline first), each filling only the pixels the ones before it left without data;
    the asset is read only where a product adds pixels. The asset's own no-data tag is not
    used (Earth Search declares 0 on ``cloud``, where 0 % is a real value); values above 100
    are no probability and count as no observation.
    """
    table = np.ones(256, np.uint8)
    table[list(nodata_classes)] = 0
    valid = np.zeros(grid.shape, bool)
    percent = None  # the asset's own integer type when it has one (Earth Search: uint8), else float32
    for scene in products:
        scl_href, value_href = scene.asset_href("scl"), scene.asset_href(asset)
        if not scl_href:
            raise MaskError(f"Scene {scene.item_id} has no 'scl' asset (SCL), which says where it has data.")
        if not value_href:
            raise MaskError(
                f"Scene {scene.item_id} has no '{asset}' asset: the mean cloud probability needs Earth Search "
                f"Collection 1 (sentinel-2-c1-l2a), whose items carry Sen2Cor's 'cloud' probability."
            )
        has_data = classes_on_grid(scl_href, grid, table, 0, lookup=lookup).view(bool)
        new = has_data & ~valid
        if not new.any():
            continue
        values, _ = read_on_grid(value_href, grid, lookup=lookup)
        new &= values <= 100
        kind = values.dtype if values.dtype.kind in "ui" and values.dtype.itemsize <= 2 else np.dtype(np.float32)
        if percent is None:
            percent = np.zeros(grid.shape, kind)
        elif percent.dtype != kind and kind.kind == "f":
            percent = percent.astype(np.float32)  # a product with fractional values: none is rounded
        np.copyto(percent, values, where=new, casting="unsafe")
        valid |= new
        if valid.all():
            break  # covered: the other products of this acquisition add nothing
    return valid, (np.zeros(grid.shape, np.uint8) if percent is None else percent)


def fused_probability_on_grid(
    products: list[Scene], grid: Grid, lookup: GridLookup, asset: str = "cloud",
    nodata_classes: tuple[int, ...] = MEAN_NODATA_CLASSES,
) -> tuple[np.ndarray, np.ndarray]:
    """One layer of items sharing a datetime, fused as odc.stac.load fuses them: band by band,
    each pixel from the first item (in ``products``' order) whose value there is not the band's
    no data (0 for both ``scl`` and ``cloud``), so the SCL and the probability of a pixel can come
    from different items. Returns (valid, percent) as :func:`datatake_probability_on_grid` does:
    valid where the fused SCL is not one of ``nodata_classes``; percent the fused probability
    there (0 where not valid), values above 100 counting as no observation."""
    if len(products) == 1:  # nothing to fuse: one product's SCL and probability
        return datatake_probability_on_grid(products, grid, lookup, asset, nodata_classes)
    identity = np.arange(256, dtype=np.uint8)
    scl = np.zeros(grid.shape, np.uint8)
    percent = None
    for scene in products:
        scl_href, value_href = scene.asset_href("scl"), scene.asset_href(asset)
        if not scl_href or not value_href:  # the same sentences as an unfused acquisition's
            return datatake_probability_on_grid([scene], grid, lookup, asset, nodata_classes)
        classes = classes_on_grid(scl_href, grid, identity, 0, lookup=lookup)
        np.copyto(scl, classes, where=scl == 0, casting="unsafe")
        values, _ = read_on_grid(value_href, grid, lookup=lookup)
        kind = values.dtype if values.dtype.kind in "ui" and values.dtype.itemsize <= 2 else np.dtype(np.float32)
        if percent is None:
            percent = np.zeros(grid.shape, kind)
        elif percent.dtype != kind and kind.kind == "f":
            percent = percent.astype(np.float32)
        np.copyto(percent, values, where=percent == 0, casting="unsafe")
    table = np.ones(256, bool)
    table[list(nodata_classes)] = False
    valid = table[scl] & (percent <= 100)
    percent[~valid] = 0
    return valid, percent


FIXED_POINT = 10_000  # a probability in percent is summed as round(percent × 10⁴), an integer:
# sums of integers do not depend on the order the acquisitions arrive in, so a run is the same
# bit for bit whatever its threads or workers do (and exact for Earth Search's whole percents)


@dataclass
class TileJob:
    """One output tile's work: the acquisitions (products meeting it) and how to count them."""

    r0: int
    c0: int
    h: int
    w: int
    grid: Grid  # the tile's grid, halo included
    chosen: list  # [(products of one acquisition, band)]
    bands: int
    halo: int
    spec: MaskSpec
    mean: bool
    probability_asset: str = "cloud"
    nodata_classes: tuple = MEAN_NODATA_CLASSES
    concurrency: int = 4
    observations: str = "datatake"


class _Counts:
    """One reading thread's counts of a tile; the threads' counts are added at the tile's end.

    Integer percents (Earth Search's uint8 ``cloud``) are summed as they are, in uint32 (at most
    65,535 observations × 100², so no overflow), and scaled to :data:`FIXED_POINT` at the end;
    other values are rounded to fixed point at once, in int64. Both give the same integers, and
    integer sums do not depend on the order they are made in.
    """

    def __init__(self, job: TileJob):
        shape = (job.bands, job.h, job.w)
        self.valid = np.zeros(shape, np.uint16)
        if job.mean:
            self.whole = np.zeros(shape, np.uint32)  # Σ p, integer percents
            self.whole_squares = np.zeros(shape, np.uint32)
            self.fixed = self.fixed_squares = None  # Σ round(p × 10⁴) and its squares, made when needed
        else:
            self.cloudy = np.zeros(shape, np.uint16)

    def add_probability(self, band: int, ok: np.ndarray, percent: np.ndarray) -> None:
        np.add(self.valid[band], ok, out=self.valid[band], casting="unsafe")
        if percent.dtype.kind in "ui":  # 0 where not ok, at most 100
            np.add(self.whole[band], percent, out=self.whole[band], casting="unsafe")
            square = percent.astype(np.uint16)
            square *= square
            np.add(self.whole_squares[band], square, out=self.whole_squares[band], casting="unsafe")
            return
        if self.fixed is None:
            self.fixed = np.zeros(self.valid.shape, np.int64)
            self.fixed_squares = np.zeros(self.valid.shape, np.int64)
        units = np.rint(percent.astype(np.float64) * FIXED_POINT).astype(np.int64)
        units[~ok] = 0
        self.fixed[band] += units
        units *= units
        self.fixed_squares[band] += units

    def add_mask(self, band: int, mask: np.ndarray, cloudy_lut: np.ndarray) -> None:
        np.add(self.valid[band], mask != NODATA, out=self.valid[band], casting="unsafe")
        np.add(self.cloudy[band], np.take(cloudy_lut, mask), out=self.cloudy[band], casting="unsafe")


def _combine(counts: list[_Counts], job: TileJob) -> dict:
    """The tile's arrays from its threads' counts (integer sums: exact in any order)."""
    valid = np.zeros((job.bands, job.h, job.w), np.uint16)
    for c in counts:
        valid += c.valid
    if not job.mean:
        cloudy = np.zeros_like(valid)
        for c in counts:
            cloudy += c.cloudy
        return dict(valid=valid, cloudy=cloudy)
    whole = np.zeros(valid.shape, np.int64)
    whole_squares = np.zeros(valid.shape, np.int64)
    for c in counts:
        whole += c.whole
        whole_squares += c.whole_squares
    whole *= FIXED_POINT
    whole_squares *= FIXED_POINT * FIXED_POINT
    for c in counts:
        if c.fixed is not None:
            whole += c.fixed
            whole_squares += c.fixed_squares
    return dict(valid=valid, cloudy=whole, squares=whole_squares)


def compute_tile(job: TileJob, progress: Progress | None = None, report=None) -> dict:
    """Count one tile: ``valid`` (uint16), ``cloudy`` (uint16 count, or for the mean the int64
    sum of percent × :data:`FIXED_POINT`), ``squares`` (mean only, Σ of their squares),
    ``pixel_obs`` and ``unreadable`` ({observation id: message} of the acquisitions it could not
    read, which it leaves out). ``report(k, n)`` is told after each acquisition.

    Each of the ``concurrency`` threads reads an acquisition and adds it to counts of its own,
    so reading, decoding and counting share the cores and an observation's arrays are released
    as soon as it is counted (memory: the threads' counts and reads, whatever the number of
    acquisitions). A plain function of a picklable job: it runs here or as a task on a Dask worker.
    """
    progress = progress or NullProgress()
    cloudy_lut = np.zeros(256, np.uint8)  # mask class -> counts as cloudy
    cloudy_lut[CLOUD] = 1
    if job.spec.count_shadows:
        cloudy_lut[SHADOW] = 1
    lookup = GridLookup(job.grid)
    unreadable: dict[str, str] = {}
    counts: list[_Counts] = []
    local = threading.local()
    lock = threading.Lock()
    halo = job.halo

    def observe(group: list[Scene], band: int) -> None:
        check_cancel(progress)
        with http.owned_by(progress):  # Cancel stops this acquisition's requests in flight
            if job.mean:  # its reads that go through GDAL enter GDAL's HTTP settings themselves
                combine = fused_probability_on_grid if job.observations == "product" else datatake_probability_on_grid
                observed = combine(group, job.grid, lookup, job.probability_asset, job.nodata_classes)
            else:
                with gdal_http_env():
                    observed = datatake_mask_on_grid(group, job.spec, job.grid, lookup)
        mine = getattr(local, "counts", None)
        if mine is None:
            mine = local.counts = _Counts(job)
            with lock:
                counts.append(mine)
        if job.mean:
            mine.add_probability(band, *observed)
        else:
            mine.add_mask(band, observed[halo:-halo, halo:-halo] if halo else observed, cloudy_lut)

    with cf.ThreadPoolExecutor(max_workers=max(1, int(job.concurrency)), thread_name_prefix="cloudprob-freq") as pool:
        futures = {pool.submit(observe, g, b): g for g, b in job.chosen}
        try:
            for k, future in enumerate(finished(futures, progress), start=1):  # Cancel looked at meanwhile
                group = futures.pop(future)
                try:
                    future.result()
                except (ReadError, MaskError) as exc:
                    unreadable.setdefault(observation_id(group, job.observations),
                                          f"{', '.join(s.item_id for s in group)}: {exc}")
                if report:
                    report(k, len(job.chosen))
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    arrays = _combine(counts, job)
    arrays.update(pixel_obs=np.int64(arrays["valid"].sum(dtype=np.int64)), unreadable=unreadable)
    return arrays


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
    measure: str = "frequency",
    probability_asset: str = "cloud",
    nodata_classes: tuple[int, ...] | None = None,
    fail_on_read_error: bool = False,
    scheduler=None,
    observations: str = "datatake",
) -> FrequencyResult:
    """Count valid observations of ``scenes`` on ``grid`` with their cloudy share, and write the rasters.

    ``outputs`` maps ``probability`` (float32 percent, no data where no valid observation),
    ``valid`` (uint16 count) and ``cloudy`` to file paths, and optionally ``stdev`` (float32,
    the standard deviation of one observation in percent: what an area's uncertainty is built
    on); one band per period.

    ``measure`` ``frequency``: cloudy (uint16) counts the mask's cloud class, and cloud shadows
    too with ``spec.count_shadows``; valid is every class but ``spec.invalid_classes``.
    ``mean_probability``: cloudy (float32) is Σ p/100 of ``probability_asset`` (percent) over
    the observations whose SCL is not in ``nodata_classes`` (default: class 0 only).
    ``nodata_classes`` given overrides the frequency measure's invalid classes too.

    An acquisition that cannot be read (a product missing, truncated, refused) is left out of
    every tile it touches, named through ``progress.warning``, counted in the outputs' tags
    and listed in ``<probability>.unreadable.csv``; ``fail_on_read_error`` stops the run instead.
    Tiles are cached under a name made of what they read: a re-run resumes every tile whose
    scenes did not change.

    ``observations`` ``datatake`` (the documented method): one observation per acquisition, its
    products combined; ``product`` (the 2024 release's published code): one per STAC item, items
    of exactly the same datetime fused band by band as odc.stac.load fuses them, so a pixel in the
    overlap of two MGRS tiles of one acquisition counts twice (:func:`group_by_product`).

    ``scheduler`` (a Dask scheduler address or ``distributed.Client``) runs the tiles as tasks
    on its workers, each reading with ``concurrency`` threads; the outputs are bit for bit those
    of the run in this process.

    Memory is about ``concurrency`` × 100 MB (a read in flight and the thread's own counts) for
    a ``tile_px`` = 2048 tile, whatever the number of scenes or the size of the grid. Decoding is CPU work: on a local or nearby
    server about twice the number of cores is fastest; a distant server wants more threads.
    """
    from dataclasses import replace

    progress = progress or NullProgress()
    started = time.monotonic()
    if measure not in MEASURES:
        raise FrequencyError(f"Unknown measure '{measure}'; choose one of {', '.join(MEASURES)}.")
    mean = measure == "mean_probability"
    if mean:
        nodata_classes = tuple(nodata_classes) if nodata_classes else MEAN_NODATA_CLASSES
        if spec.source != "scl":
            raise FrequencyError("The mean cloud probability takes its validity from the SCL: use the SCL mask source.")
    elif nodata_classes:
        spec = replace(spec, invalid_classes=tuple(nodata_classes))
    if observations not in OBSERVATIONS:
        raise FrequencyError(f"Unknown observations '{observations}'; choose one of {', '.join(OBSERVATIONS)}.")
    periods = periods or [Period("all")]
    if len(periods) > 400:
        raise FrequencyError(f"{len(periods)} periods is too many bands.")
    groups = []
    obs_id = lambda group: observation_id(group, observations)  # noqa: E731
    for group in (group_by_product if observations == "product" else group_by_datatake)(scenes):
        when = min(parse_datetime(s.datetime) for s in group)
        band = next((i for i, p in enumerate(periods) if p.contains(when)), None)
        if band is not None:
            groups.append((group, band))
    if not groups:
        raise FrequencyError("No scenes fall in the period.")
    if observations == "product":
        _check_one_year_per_band(groups, periods)
    if len(groups) > np.iinfo(np.uint16).max:
        raise FrequencyError("More than 65535 acquisitions: split the period.")

    from shapely.geometry import shape
    from shapely.prepared import prep

    # each product's footprint: a tile reads only the products that meet it
    footprints = {}
    for group, _ in groups:
        for s in group:
            footprints[s.item_id] = prep(shape(s.geometry)) if s.geometry else None

    measure_key = [measure, probability_asset, list(nodata_classes or ())] if mean else [measure]
    if observations != "datatake":  # the datatake key as before, so earlier runs' tiles still resume
        measure_key.append(observations)
    key = _cache_key(grid, spec, periods, tile_px, measure_key)
    remove_stale_parts(*outputs.values(), os.path.splitext(outputs["probability"])[0] + ".unreadable.csv")
    _check_overlap(grid, footprints)
    # held until the end (core/cache.py): another run of the same key never removes this run's tiles
    store = TileCache(Path(cache_dir or default_cache_dir()), key, progress)
    cache = store.folder
    tiles = list(_tiles(grid, tile_px))
    halo = int(math.ceil(spec.buffer_m / grid.resolution)) if (spec.buffer_m > 0 and not mean) else 0
    grid_epsg = _epsg_of(grid.crs)
    resumed = 0
    pixel_obs = 0
    network_bytes_reset()

    def tile_groups(tile_grid: Grid):
        area = _footprint(tile_grid)
        area_ll = area_in_crs(area, grid_epsg, 4326) if grid_epsg else None
        chosen = []
        for group, band in groups:
            touching = [s for s in group
                        if footprints[s.item_id] is None or area_ll is None or footprints[s.item_id].intersects(area_ll)]
            if touching:
                chosen.append((touching, band))
        return chosen

    unreadable: dict[str, str] = {}  # datatake id -> what failed

    cached = store.load  # a finished tile's pixel-observations; a damaged one is named and recomputed

    from .executor import LocalExecutor, executor_for

    executor = executor_for(scheduler)
    tile_paths: dict[tuple[int, int], Path] = {}
    done_tiles = 0

    def run_tile(job: TileJob, local_progress):
        """In this process: Cancel and progress reach inside the tile."""
        def report(k, n):
            progress.set_progress(min(95.0, 95.0 * (done_tiles + k / max(1, n)) / len(tiles)))

        return compute_tile(job, local_progress, report)

    try:
        # An acquisition found unreadable in one tile is left out of every tile: the tiles that
        # already counted it are named differently without it, so the next pass recomputes
        # exactly those and resumes the rest.
        first_pass = True
        while True:
            known = len(unreadable)
            pixel_obs = done_tiles = 0
            jobs = []
            for r0, c0, h, w in tiles:
                check_cancel(progress)
                tile_grid = _sub_grid(grid, r0, c0, h, w, halo)
                chosen = [(g, b) for g, b in tile_groups(tile_grid) if obs_id(g) not in unreadable]
                path = cache / f"tile_{r0}_{c0}_{_tile_key(chosen)}.npz"
                obs = cached(path)
                if obs is None:
                    jobs.append(TileJob(r0, c0, h, w, tile_grid, chosen, len(periods), halo, spec, mean,
                                        probability_asset, tuple(nodata_classes or ()), concurrency, observations))
                    continue
                if first_pass:
                    resumed += 1  # finished by an earlier run
                tile_paths[(r0, c0)] = path
                pixel_obs += obs
                done_tiles += 1
                progress.set_progress(95.0 * done_tiles / len(tiles))
            work = run_tile if isinstance(executor, LocalExecutor) else compute_tile
            for index, arrays in executor.map(work, jobs, progress, ordered=False):
                job = jobs[index]
                failed = arrays.pop("unreadable")
                if failed and fail_on_read_error:
                    first = next(iter(failed.values()))
                    raise FrequencyError(
                        f"An acquisition could not be read (finished tiles are kept; a re-run resumes): {first}")
                for datatake, message in failed.items():
                    if datatake not in unreadable:
                        progress.warning(f"Acquisition {datatake} left out (unreadable): {message}")
                    unreadable.setdefault(datatake, message)
                # named by what it holds: a datatake another tile found unreadable meanwhile is
                # still in it, so the next pass recomputes it without
                chosen = [(g, b) for g, b in job.chosen if obs_id(g) not in failed]
                path = cache / f"tile_{job.r0}_{job.c0}_{_tile_key(chosen)}.npz"
                store.save(path, arrays, _save_tile)  # a name of this run's own, then renamed: runs never collide
                tile_paths[(job.r0, job.c0)] = path
                pixel_obs += int(arrays["pixel_obs"])
                del arrays
                done_tiles += 1
                progress.set_progress(95.0 * done_tiles / len(tiles))
            first_pass = False
            if len(unreadable) == known:
                break
    except BaseException:
        store.release()  # finished tiles stay for a re-run
        raise
    finally:
        executor.close()
    try:
        if len(unreadable) == len(groups):
            raise FrequencyError("No acquisition could be read: " + "; ".join(list(unreadable.values())[:3]))
        if pixel_obs == 0:
            raise FrequencyError(
                f"None of the {len(groups) - len(unreadable)} acquisitions has a valid observation in the area "
                f"({grid.shape[1]} × {grid.shape[0]} pixels): every pixel would be no data. Check the area, "
                "its CRS, the period and the scenes.")

        check_cancel(progress)
        tags = {"measure": measure, "unreadable_acquisitions": str(len(unreadable))}
        if observations != "datatake":
            tags["observations"] = observations
        if mean:
            tags.update(probability_asset=probability_asset, nodata_classes=",".join(map(str, nodata_classes)))
        else:
            tags["mask"] = json.dumps({k: v for k, v in asdict(spec).items() if k != "extra"})
        stats = _write_outputs(grid, tiles, tile_paths, periods, outputs, tags, len(groups) - len(unreadable), mean,
                               progress)
        unreadable_csv = _write_unreadable(outputs["probability"], unreadable, groups, observations)
    except BaseException:
        store.release()
        raise
    store.finish(tile_paths.values())  # this run's tiles go, unless another run of the same key still uses them
    progress.set_progress(100.0)
    return FrequencyResult(
        probability=outputs["probability"], valid=outputs["valid"], cloudy=outputs["cloudy"], periods=periods,
        measure=measure, acquisitions=len(groups), scenes=sum(len(g) for g, _ in groups), pixel_observations=pixel_obs,
        tiles=len(tiles), tiles_resumed=resumed, seconds=time.monotonic() - started,
        bytes_fetched=network_bytes(), stats=stats, unreadable=dict(unreadable), unreadable_csv=unreadable_csv,
    )


def _save_tile(path: Path, arrays: dict) -> None:
    """A finished tile as an ``.npz`` that :func:`numpy.load` reads, compressed at zlib level 1:
    numpy's ``savez_compressed`` (level 6) took 1.1 s for a 2048² tile of the mean measure,
    level 1 takes 0.34 s for 13 % more bytes, and a national run saves ~500 tiles."""
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, value in arrays.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asanyarray(value), allow_pickle=False)


def _write_unreadable(probability_path: str, unreadable: dict[str, str], groups,
                      observations: str = "datatake") -> str | None:
    """``<probability>.unreadable.csv``: each acquisition left out, its products and the error."""
    import csv

    path = os.path.splitext(probability_path)[0] + ".unreadable.csv"
    if not unreadable:
        if os.path.exists(path):
            os.remove(path)  # a stale list from an earlier run would name what is now counted
        return None
    products = {observation_id(g, observations): [s.item_id for s in g] for g, _ in groups}
    tmp = f"{path}.part-{os.getpid()}"
    with open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["datatake_id", "item_ids", "error"])
        for datatake, message in sorted(unreadable.items()):
            writer.writerow([datatake, " ".join(products.get(datatake, [])), message])
    os.replace(tmp, path)
    return path


def _epsg_of(crs) -> int | None:
    from pyproj import CRS

    return CRS.from_user_input(crs).to_epsg()


def observation_stdev(valid: np.ndarray, cloudy: np.ndarray, squares: np.ndarray | None) -> np.ndarray:
    """Standard deviation of one observation in percent (population form; NaN without
    observations): 100·sqrt(p(1−p)) for 0/1 observations (``squares`` None), else from Σx²."""
    n = valid.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = cloudy / n
        second = p if squares is None else squares / n
        var = np.maximum(second - p * p, 0.0)
        return np.where(n > 0, 100.0 * np.sqrt(var), np.nan)


def _write_outputs(grid: Grid, tiles, tile_paths: dict, periods, outputs: dict[str, str], tags: dict, n_acq: int,
                   mean: bool, progress: Progress | None = None) -> dict:
    """Assemble the rasters from the tile files; temporary files renamed at the end. Cancel is
    honoured between tiles (a national raster takes minutes), the temporary files removed."""
    progress = progress or NullProgress()
    import rasterio
    from rasterio.windows import Window

    bands = len(periods)
    total_valid = np.zeros(bands, np.float64)
    total_cloudy = np.zeros(bands, np.float64)
    # a pixel without a valid observation has no data in every output (valid 0 is no data, so
    # statistics of the count skip it as they skip the probability); cloudy keeps its zeros
    kinds = {  # (data type, no data, unit, what)
        "valid": ("uint16", RASTER_NODATA["uint16"], "count", "valid observations"),
        "cloudy": ("float32" if mean else "uint16", None,
                   "expected count, sum of probability / 100" if mean else "count", "cloudy observations"),
        "probability": ("float32", PROBABILITY_NODATA, "percent", "mean cloud probability" if mean else "cloud frequency"),
        "stdev": ("float32", PROBABILITY_NODATA, "percent", "standard deviation of one observation"),
    }
    with contextlib.ExitStack() as stack:  # every output renamed into place only once all are written
        ds = {}
        for k, path in outputs.items():
            if path:
                dtype, nodata = kinds[k][:2]
                profile = geotiff_profile(grid, dtype, bands, nodata, num_threads="ALL_CPUS")
                ds[k] = stack.enter_context(rasterio.open(stack.enter_context(atomic(path)), "w", **profile))
        for r0, c0, h, w in tiles:
            check_cancel(progress)
            with np.load(tile_paths[(r0, c0)]) as done:
                valid, cloudy = done["valid"], done["cloudy"]
                squares = done["squares"] if "squares" in done else None
            if mean:  # fixed point (percent × 10⁴) to fractions: Σ p/100 and Σ (p/100)²
                cloudy = cloudy / (FIXED_POINT * 100.0)
                squares = squares / (FIXED_POINT * 100.0) ** 2
            window = Window(c0, r0, w, h)
            ds["valid"].write(valid, window=window)
            ds["cloudy"].write(cloudy.astype(np.float32) if mean else cloudy, window=window)
            with np.errstate(invalid="ignore", divide="ignore"):
                prob = np.where(valid > 0, 100.0 * cloudy / np.maximum(valid, 1), PROBABILITY_NODATA)
            ds["probability"].write(prob.astype(np.float32), window=window)
            if "stdev" in ds:
                sd = observation_stdev(valid, cloudy, squares)
                ds["stdev"].write(np.where(np.isnan(sd), PROBABILITY_NODATA, sd).astype(np.float32), window=window)
            total_valid += valid.reshape(bands, -1).sum(axis=1)
            total_cloudy += cloudy.reshape(bands, -1).sum(axis=1)
        for k, d in ds.items():
            for i, p in enumerate(periods, start=1):
                d.set_band_description(i, f"{kinds[k][3]}, {p.label} ({kinds[k][2]})")
            d.update_tags(units=kinds[k][2], acquisitions=str(n_acq), software="cloud_probability", **tags)
            add_overviews(d, categorical=k == "valid")
    return {
        "mean_probability_pct": [float(100 * c / v) if v else None for c, v in zip(total_cloudy, total_valid)],
        "valid_observations": [int(v) for v in total_valid],
    }
