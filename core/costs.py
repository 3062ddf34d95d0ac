"""What a per-pixel run will cost, said before it starts: pixels, disk and time.

A resolution far finer than the sources (1 m from the SCL's 20 m) multiplies the pixels by 400
without adding detail: such a run used to start without a word and fill the disk an hour later.
:func:`frequency_cost` estimates it from the grid and the scenes' footprints; the figures per
pixel come from measurements (:data:`MEASURED`), made by ``benchmarks/bench_cost.py`` on this
project's 2-core machine against the sample archive served on loopback. Time scales with the
pixel-acquisitions (each acquisition's footprint on the grid, in pixels), disk with the pixels.

Disk is given as a range: the least is the measured compressed size (DEFLATE; the sample
archive's synthetic scenes compress at least as well as real ones, so it is a floor), the most
the size without compression. A run whose least does not fit on its disk cannot succeed and is
refused (:func:`disk_problems`); one whose most does not fit is warned about.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

SOURCE_RESOLUTION_M = 20.0  # the SCL and the 'cloud' asset: what a finer grid only repeats
ACQUISITIONS_PER_YEAR = 146  # every place, two satellites on two relative orbits (the sample archive's rhythm)
OVERVIEW_SHARE = 1 / 3  # pyramids (factors 2…64) of rasters of 4096 px and more add about a third
TILE_PX = 2048  # core.frequency's tile: each reads every acquisition that meets it

# The time. At the sources' resolution or coarser, the work follows the pixel-observations: the
# UK year of docs/benchmarks.md's "A UK year on one machine" (make bench-national, this 2-core machine) counted
# 84.8 G of them in 2,474 s, 34.3 M/s. On a finer grid each tile reads every acquisition that
# meets it and fills every pixel of it: the work is the pixels × the acquisitions meeting their
# tile, measured by benchmarks/bench_cost.py (2026-12-02, this 2-core machine shared with other
# work, 1-minute load 4: the small sample archive on loopback, grids of 4 to 6 M pixels at 5, 2
# and 1 m, which ran at 44–50 M/s for the mean and 84–87 M/s for the frequency; the slowest kept).
RATE_AT_SOURCE = 34.3e6  # pixel-observations per second
RATE_FINER = {"mean_probability": 44.4e6, "frequency": 83.9e6}  # pixel × acquisition meeting the tile, per second
# Bytes per pixel and band, DEFLATE-compressed, by resolution ratio (sources / grid: 1 = 20 m):
# the four frequency rasters together, the resume cache's tiles, one smoothing raster (float32);
# benchmarks/bench_cost.py, as above.
MEASURED_BYTES = {
    "mean_probability": {1: (2.02, 2.13, 0.70), 4: (0.34, 0.51, 0.13), 10: (0.45, 0.74, 0.18), 20: (0.26, 0.46, 0.09)},
    "frequency": {1: (0.76, 0.17, 0.35), 4: (0.15, 0.07, 0.08), 10: (0.21, 0.12, 0.13), 20: (0.15, 0.09, 0.07)},
}
# without compression, per pixel and band: probability, valid (uint16), cloudy, spread (float32);
# the mean's cloudy is float32, the frequency's uint16; a smoothing raster is float32
UNCOMPRESSED = {"mean_probability": 4 + 2 + 4 + 4, "frequency": 4 + 2 + 2 + 4}
SMOOTHING_UNCOMPRESSED = 4


@dataclass
class Work:
    """What a frequency run reads: pixel-observations (each acquisition's footprint on the grid,
    in pixels) and pixels × the acquisitions meeting their tile."""

    footprint: float
    tiles: float


@dataclass
class Cost:
    """A run's estimated cost; bytes per output place (see :func:`disk_problems`)."""

    pixels: int
    bands: int
    work: float  # the amount the time is estimated from (see :func:`frequency_cost`)
    seconds: float
    rate: float  # … per second
    finer: float  # how many times finer than the sources the grid is (1: as fine)
    least: dict = field(default_factory=dict)  # {place: bytes} at the measured compression
    most: dict = field(default_factory=dict)  # {place: bytes} without compression


def _measured_bytes(measure: str, ratio: float) -> tuple[float, float, float]:
    """Bytes per pixel and band (rasters, cache, one smoothing raster) at the measured resolution
    ratio nearest to this one (in log scale)."""
    table = MEASURED_BYTES[measure]
    nearest = min(table, key=lambda r: abs(math.log(r) - math.log(max(1.0, ratio))))
    return table[nearest]


def frequency_cost(shape: tuple[int, int], bands: int, work: Work, measure: str, resolution_m: float,
                   outputs: dict[str, str], cache_place: str | None, smoothing: dict[str, str] | None = None) -> Cost:
    """The cost of a frequency run on a grid of ``shape`` (rows, cols) with ``bands`` bands and
    ``work`` to do, its four rasters written to ``outputs`` ({name: path}), its resume cache in
    ``cache_place`` (None: not counted) and, for a chain, the smoothing rasters ``smoothing``
    ({name: path}). Bytes are keyed by path; :func:`disk_problems` adds them up per disk. The
    time is the pixel-observations at :data:`RATE_AT_SOURCE` on a grid as coarse as the
    sources, else pixels × acquisitions meeting their tile at :data:`RATE_FINER`."""
    rows, cols = shape
    pixels = rows * cols
    ratio = SOURCE_RESOLUTION_M / resolution_m
    rasters, cache, smoothed = _measured_bytes(measure, ratio)
    pyramids = 1 + (OVERVIEW_SHARE if min(rows, cols) >= 4096 else 0)
    least, most = {}, {}
    per_raster = pixels * bands * pyramids
    share = {"probability": 4, "valid": 2, "cloudy": UNCOMPRESSED[measure] - 10, "stdev": 4}
    for name, path in outputs.items():
        least[path] = least.get(path, 0) + per_raster * rasters * share.get(name, 4) / UNCOMPRESSED[measure]
        most[path] = most.get(path, 0) + per_raster * share.get(name, 4)
    for path in (smoothing or {}).values():
        least[path] = least.get(path, 0) + per_raster * smoothed
        most[path] = most.get(path, 0) + per_raster * SMOOTHING_UNCOMPRESSED
    if cache_place:
        least[cache_place] = least.get(cache_place, 0) + pixels * bands * cache
        most[cache_place] = most.get(cache_place, 0) + pixels * bands * cache
    if ratio > 1.0001:  # each acquisition fills its own band only: the bands share the work
        amount, rate = work.tiles, RATE_FINER[measure]
    else:
        amount, rate = work.footprint, RATE_AT_SOURCE
    return Cost(pixels, bands, amount, amount / rate, rate, ratio,
                {k: int(v) for k, v in least.items()}, {k: int(v) for k, v in most.items()})


def frequency_work(footprints: list, crs, transform, shape: tuple[int, int], tile_px: int = TILE_PX) -> Work:
    """:class:`Work` of a grid (``crs``, affine ``transform``, ``shape``) for acquisitions of the
    given ``footprints`` (shapely, longitude/latitude; None where unknown: everywhere). Shares of
    area are taken in degrees, near enough for an estimate of time."""
    from shapely.prepared import prep

    rows, cols = shape
    outline = grid_outline_lonlat(crs, _bounds(transform, 0, 0, rows, cols))
    pixels = rows * cols
    footprint = 0.0
    for f in footprints:
        share = 1.0 if f is None else min(1.0, f.intersection(outline).area / max(outline.area, 1e-300))
        footprint += pixels * share
    prepared = [None if f is None else prep(f) for f in footprints]
    tiles = 0.0
    for r0 in range(0, rows, tile_px):
        for c0 in range(0, cols, tile_px):
            h, w = min(tile_px, rows - r0), min(tile_px, cols - c0)
            tile = outline if (h, w) == (rows, cols) else grid_outline_lonlat(crs, _bounds(transform, r0, c0, h, w))
            tiles += h * w * sum(1 for f in prepared if f is None or f.intersects(tile))
    return Work(footprint, tiles)


def assumed_work(shape: tuple[int, int], days: float) -> Work:
    """:class:`Work` before the scenes are known: every pixel seen by :data:`ACQUISITIONS_PER_YEAR`
    acquisitions a year."""
    n = shape[0] * shape[1] * ACQUISITIONS_PER_YEAR * days / 365.25
    return Work(n, n)


def _bounds(transform, r0, c0, h, w) -> tuple[float, float, float, float]:
    x0, y0 = transform.c + c0 * transform.a, transform.f + r0 * transform.e
    x1, y1 = x0 + w * transform.a, y0 + h * transform.e
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


def acquisition_footprints(products: dict) -> list:
    """One footprint per acquisition (longitude/latitude, shapely), the union of its products'
    (``products`` maps an acquisition id to its products' geometries, None where unknown); None
    for an acquisition with a product of unknown footprint."""
    from shapely.ops import unary_union

    out = []
    for geometries in products.values():
        if not geometries or any(g is None for g in geometries):
            out.append(None)
        else:
            out.append(unary_union([g.buffer(0) if not g.is_valid else g for g in geometries]))
    return out


def grid_outline_lonlat(crs, bounds: tuple[float, float, float, float]):
    """The outline of ``bounds`` (in ``crs``) in longitude/latitude, densified (shapely)."""
    from pyproj import CRS, Transformer
    from shapely.geometry import Polygon

    xmin, ymin, xmax, ymax = bounds
    steps = [i / 32 for i in range(32)]
    ring = ([(xmin + (xmax - xmin) * t, ymin) for t in steps] + [(xmax, ymin + (ymax - ymin) * t) for t in steps]
            + [(xmax - (xmax - xmin) * t, ymax) for t in steps] + [(xmin, ymax - (ymax - ymin) * t) for t in steps])
    to_lonlat = Transformer.from_crs(CRS.from_user_input(crs), CRS.from_epsg(4326), always_xy=True)
    xs, ys = to_lonlat.transform([x for x, _ in ring], [y for _, y in ring])
    return Polygon(list(zip(xs, ys)))


def size_text(n: float) -> str:
    """Bytes as a person reads them (kB, MB, GB, TB; powers of 1000)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} bytes"


def duration_text(seconds: float) -> str:
    """A duration as a person says it: 40 s, 12 min, 3.5 h, 2.1 days."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.2g} h"
    return f"{seconds / 86400:.2g} days"


def describe(cost: Cost) -> str:
    """One paragraph: pixels, disk, time, and where the figures come from."""
    if cost.finer > 1.0001:
        note = (f" The grid is {cost.finer:.3g} times finer than the sources' {SOURCE_RESOLUTION_M:g} m: "
                f"{cost.finer ** 2:.3g} pixels for each source pixel, and no more detail.")
        unit, source = "pixel-acquisitions", "benchmarks/bench_cost.py, finer grids"
    else:
        note, unit, source = "", "pixel-observations", "make bench-national"
    return (
        f"This run will make {cost.pixels:,} pixels × {cost.bands} band(s), about {cost.work / 1e6:,.0f} million "
        f"{unit}: about {duration_text(cost.seconds)} of computing at {cost.rate / 1e6:.3g} million per second (measured "
        f"by {source}, on a 2-core machine reading over loopback; a slower link or other cores change it), and "
        f"{size_text(sum(cost.least.values()))} to {size_text(sum(cost.most.values()))} of disk (compressed as "
        f"measured on the sample archive, to uncompressed; the resume cache's share is freed at the end).{note}")


def disk_problems(cost: Cost, free: dict, disk_of) -> tuple[list[str], list[str]]:
    """(errors, warnings) about the disks: ``free`` maps a disk (``disk_of(path)``) to its free
    bytes. An error where even the compressed size does not fit; a warning where the
    uncompressed size does not."""
    least, most, places = {}, {}, {}
    for path, n in cost.least.items():
        disk = disk_of(path)
        least[disk] = least.get(disk, 0) + n
        most[disk] = most.get(disk, 0) + cost.most.get(path, n)
        places.setdefault(disk, path)
    errors, warnings = [], []
    for disk in least:
        where = places[disk]
        if least[disk] > free[disk]:
            errors.append(
                f"The disk of {where} has {size_text(free[disk])} free; this run needs at least "
                f"{size_text(least[disk])} there (at the compression measured on the sample archive; up to "
                f"{size_text(most[disk])} uncompressed). Free some space, write elsewhere, or use a coarser "
                "resolution or a smaller area.")
        elif most[disk] > free[disk]:
            warnings.append(
                f"The disk of {where} has {size_text(free[disk])} free: enough for this run only if its rasters "
                f"compress (it needs {size_text(least[disk])} at the compression measured on the sample archive, "
                f"{size_text(most[disk])} uncompressed).")
    return errors, warnings
