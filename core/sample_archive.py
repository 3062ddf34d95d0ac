"""A synthetic but physically plausible year of Sentinel-2 L2A scenes, and the truth behind it.

Used by the demo, the tests and the benchmarks. Everything is drawn from a known per-pixel
cloud-probability surface ``p`` defined in EPSG:27700 around Greenwich, so that:

* scenes come as MGRS-like tiles in two UTM zones (EPSG:32630 west of 0° E, 32631 east of
  it) that overlap each other and their neighbours, as real MGRS tiles do;
* two relative orbits (R094 west, R137 east) with partial swaths: outside a swath the SCL is
  no data (0), so the number of acquisitions differs across the area; each orbit is revisited
  every 5 days by alternating satellites;
* each acquisition (datatake) draws one spatially correlated Gaussian field ``g`` in
  EPSG:27700; a pixel is cloudy when ``Φ(g) < q`` where ``q`` is ``p`` plus artefacts. Every
  field is evaluated at the pixel centre's EPSG:27700 position, so the tiles of one datatake
  agree where they overlap, whichever zone they are in;
* artefacts that later stages must remove: an orbit-edge band where clouds are over-detected
  (``edge_bias``; it lies inside the orbit overlap), and an "urban" disc where clear pixels
  are classified as cloud (SCL 8) at rate ``urban_false_cloud``;
* cloud shadows (3) displaced from clouds, thin cirrus (10) at cloud edges, medium/high
  probability cloud (8/9), winter snow (11), water (6), urban (5), vegetation (4), a few dark
  (2), unclassified (7) and defective (1) pixels;
* STAC items in the form of Earth Search v1 ``sentinel-2-l2a``, including one datatake split
  into two partial products and one reprocessed duplicate (another baseline, same pixels).

Outputs under the archive folder: ``items/collection.json``, ``items/items.json``, the COGs, ``zones/``
(small-area polygons with LSOA-like codes), and ``truth/`` (probability raster in EPSG:27700,
per-zone true probability, per-item class counts, the spec). Asset hrefs are relative to the
archive folder; whoever serves it makes them absolute (``scripts/servers.py``).
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import shutil
from functools import lru_cache
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Iterable

import numpy as np

from .progress import NullProgress, Progress, check_cancel

SCL_NODATA, SCL_DEFECTIVE, SCL_DARK, SCL_SHADOW, SCL_VEGETATION, SCL_NOT_VEGETATED = 0, 1, 2, 3, 4, 5
SCL_WATER, SCL_UNCLASSIFIED, SCL_CLOUD_MEDIUM, SCL_CLOUD_HIGH, SCL_CIRRUS, SCL_SNOW = 6, 7, 8, 9, 10, 11

GREENWICH_27700 = (538_900.0, 177_600.0)  # 0° E, 51.48° N, on the British National Grid
RES = 20.0  # metres, SCL resolution
GENERATOR_VERSION = 2  # bump when the output changes for the same spec: cached archives are rebuilt
ZONE_EPSG = {30: 32630, 31: 32631}
TILE_SQUARES = {30: ["YC", "YD", "XC", "XD"], 31: ["CT", "CU", "DT", "DU"]}


@dataclass(frozen=True)
class SampleSpec:
    """Size and content of a sample archive. ``small()`` for tests, ``full()`` for benchmarks."""

    tile_px: int = 160  # SCL pixels per tile side (5490 for real tiles)
    overlap_px: int = 16  # overlap between neighbouring tiles (490 for real tiles)
    rows: int = 2  # tile rows per UTM zone
    cols: int = 1  # tile columns per UTM zone
    start: date = date(2024, 1, 1)
    end: date = date(2024, 12, 31)
    seed: int = 2024
    cloud_corr_m: float = 900.0  # correlation length of the cloud field (metres)
    lattice_m: float = 60.0  # spacing of the lattice the cloud field is drawn on
    day_weight: float = 0.5  # share of the field's variance common to the whole datatake
    # width of the over-detection band inside each swath edge, share of the area width; 0.44 is
    # the whole orbit overlap (edges at ±0.22): every observation from two orbits is biased
    edge_band_frac: float = 0.44
    edge_bias: float = 0.08  # added to the cloud probability in that band (fraction)
    urban_false_cloud: float = 0.15  # rate at which clear urban pixels are classified as cloud
    # centre of the urban disc in area-normalised coordinates (−1…1): where the true probability is
    # about average, so an urban-fraction covariate describes the artefact and not the climate
    urban_uv: tuple[float, float] = (-0.36, -0.42)
    shadow_shift_m: tuple[float, float] = (-300.0, 400.0)  # shadow offset from its cloud (x, y metres)
    truecolor_every: int = 6  # write red/green/blue for every N-th datatake (0: never)
    n_zones: int = 300
    blocksize: int = 128  # COG internal tile size (GDAL minimum)
    max_datatakes: int = 0  # 0 = all in the period (benchmarks may cap the count)

    @staticmethod
    def small(**changes) -> "SampleSpec":
        """Seconds to generate: tests and the demo."""
        return SampleSpec(**changes)

    @staticmethod
    def full(**changes) -> "SampleSpec":
        """Real-size 5490×5490 tiles (benchmarks); cap ``max_datatakes`` to bound the time."""
        base = dict(tile_px=5490, overlap_px=490, cloud_corr_m=6000.0, lattice_m=200.0, blocksize=512, n_zones=2000,
                    shadow_shift_m=(-1500.0, 2000.0), edge_band_frac=0.12, urban_uv=(-0.36, 0.24))
        base.update(changes)
        return SampleSpec(**base)

    @property
    def tile_m(self) -> float:
        return self.tile_px * RES

    @property
    def stride_m(self) -> float:
        return (self.tile_px - self.overlap_px) * RES


@dataclass
class Tile:
    zone: int
    epsg: int
    square: str
    x0: float  # upper-left corner in the tile's UTM CRS (metres)
    y0: float
    size_px: int

    @property
    def code(self) -> str:
        return f"{self.zone}U{self.square}"

    def transform(self, res: float = RES):
        from rasterio.transform import Affine

        return Affine(res, 0.0, self.x0, 0.0, -res, self.y0)


@dataclass
class Datatake:
    index: int
    satellite: str  # "S2A" / "S2B"
    orbit: int  # relative orbit
    sensing: datetime
    absolute_orbit: int

    @property
    def datatake_id(self) -> str:
        return f"G{self.satellite}_{self.sensing:%Y%m%dT%H%M%S}_{self.absolute_orbit:06d}"


@dataclass
class Layout:
    spec: SampleSpec
    aoi: tuple[float, float, float, float]  # EPSG:27700 (xmin, ymin, xmax, ymax), multiple of 20 m
    tiles: list[Tile]
    datatakes: list[Datatake]
    swath_edges: dict[int, tuple[str, float, float]]  # orbit -> (side, x at centre row, slope dx/dy)
    urban: tuple[float, float, float]  # centre x, y, radius (EPSG:27700)
    lattice_origin: tuple[float, float]
    lattice_shape: tuple[int, int]  # rows, cols
    extra: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# the truth surface and the fields


@lru_cache(maxsize=32)
def _transformer(src: int, dst: int):
    """Cached: building a pyproj Transformer costs more than using it on a small tile."""
    from pyproj import Transformer

    return Transformer.from_crs(src, dst, always_xy=True)


def true_probability(x: np.ndarray, y: np.ndarray, aoi: tuple[float, float, float, float]) -> np.ndarray:
    """The per-pixel cloud probability (fraction 0–1) everything is drawn from; x, y in EPSG:27700."""
    cx, cy = (aoi[0] + aoi[2]) / 2, (aoi[1] + aoi[3]) / 2
    u = (x - cx) / ((aoi[2] - aoi[0]) / 2)
    v = (y - cy) / ((aoi[3] - aoi[1]) / 2)
    p = 0.55 - 0.10 * u + 0.07 * np.sin(2.5 * v + 0.5) + 0.12 * np.exp(-((u - 0.35) ** 2 + (v + 0.35) ** 2) / 0.08)
    return np.clip(p, 0.05, 0.95)


def _hash01(ix: np.ndarray, iy: np.ndarray, seed: int) -> np.ndarray:
    """Deterministic uniform [0, 1) per integer lattice node (splitmix64 of the node and seed)."""
    with np.errstate(over="ignore"):
        z = (ix.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ (
            iy.astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
        ) ^ np.uint64(seed * 0x165667B19E3779F9 & 0xFFFFFFFFFFFFFFFF)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _normal_cdf(g: np.ndarray) -> np.ndarray:
    from scipy.special import ndtr

    return ndtr(g)


class DatatakeFields:
    """The fields of one datatake, evaluated at any EPSG:27700 position."""

    def __init__(self, layout: Layout, datatake: Datatake):
        from scipy.ndimage import gaussian_filter

        spec = layout.spec
        self.layout = layout
        self.datatake = datatake
        rng = np.random.default_rng([spec.seed, datatake.index])
        sigma = spec.cloud_corr_m / spec.lattice_m
        white = rng.standard_normal(layout.lattice_shape)
        # 'wrap' keeps the field stationary, so its variance is exactly the theoretical one
        local = gaussian_filter(white, sigma, mode="wrap") * math.sqrt(4 * math.pi) * sigma
        common = rng.standard_normal()
        self.g = math.sqrt(1 - spec.day_weight) * local + math.sqrt(spec.day_weight) * common
        snow_white = rng.standard_normal(layout.lattice_shape)
        self.snow = gaussian_filter(snow_white, sigma * 2, mode="wrap") * math.sqrt(4 * math.pi) * sigma * 2
        winter = datatake.sensing.month in (12, 1, 2)
        self.snow_day = winter and rng.random() < 0.35
        self.seed = spec.seed * 1_000_003 + datatake.index

    def _lattice(self, field_: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        from scipy.ndimage import map_coordinates

        ox, oy = self.layout.lattice_origin
        lat = self.layout.spec.lattice_m
        cols = (x - ox) / lat
        rows = (oy - y) / lat
        return map_coordinates(field_, [rows.ravel(), cols.ravel()], order=1, mode="nearest").reshape(x.shape)

    def classify(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """SCL classes (uint8) at EPSG:27700 positions; no-data (swath) is applied by the caller."""
        layout, spec = self.layout, self.layout.spec
        p = true_probability(x, y, layout.aoi)
        q = p + spec.edge_bias * edge_band(layout, self.datatake.orbit, x, y)
        q = np.minimum(q, 0.99)
        z = _normal_cdf(self._lattice(self.g, x, y))
        cloudy = z < q
        opacity = np.where(cloudy, (q - z) / q, 0.0)
        sx, sy = spec.shadow_shift_m
        z_src = _normal_cdf(self._lattice(self.g, x - sx, y - sy))
        q_src = np.minimum(true_probability(x - sx, y - sy, layout.aoi), 0.99)
        shadow = ~cloudy & (z_src < q_src)  # the cloud the sun shines through is cloud there

        ix = np.floor(x / RES).astype(np.int64)
        iy = np.floor(y / RES).astype(np.int64)
        u1 = _hash01(ix, iy, self.seed)
        u2 = _hash01(ix, iy, self.seed + 7919)
        ux, uy, ur = layout.urban
        urban = (x - ux) ** 2 + (y - uy) ** 2 < ur**2
        water = river_mask(layout, x, y)

        scl = np.full(x.shape, SCL_VEGETATION, dtype=np.uint8)
        # static land cover: 100 m parcels of bare soil among vegetation (as real SCLs have)
        parcel = _hash01(ix // 5, iy // 5, spec.seed + 17)
        scl[parcel < 0.22] = SCL_NOT_VEGETATED
        scl[urban] = SCL_NOT_VEGETATED
        scl[water] = SCL_WATER
        scl[u2 < 0.010] = SCL_DARK
        scl[(u2 >= 0.010) & (u2 < 0.015)] = SCL_UNCLASSIFIED
        if self.snow_day:
            scl[(self._lattice(self.snow, x, y) > 0.3) & ~water] = SCL_SNOW
        scl[shadow] = SCL_SHADOW
        scl[urban & ~cloudy & (u1 < spec.urban_false_cloud)] = SCL_CLOUD_MEDIUM
        scl[cloudy & (opacity < 0.2)] = SCL_CIRRUS
        scl[cloudy & (opacity >= 0.2) & (opacity < 0.55)] = SCL_CLOUD_MEDIUM
        scl[cloudy & (opacity >= 0.55)] = SCL_CLOUD_HIGH
        scl[u2 > 0.9997] = SCL_DEFECTIVE
        return scl


def river_mask(layout: Layout, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A Thames-like meandering band of water, 120 m wide (EPSG:27700 positions)."""
    xmin, ymin, xmax, ymax = layout.aoi
    centre = ymin + 0.3 * (ymax - ymin) + 0.06 * (ymax - ymin) * np.sin((x - xmin) / (0.15 * (xmax - xmin)))
    return np.abs(y - centre) < 60.0


def swath_edge_x(layout: Layout, orbit: int, y: np.ndarray | float) -> np.ndarray | float:
    """Easting of the swath edge of ``orbit`` at northing ``y`` (EPSG:27700)."""
    _side, x_c, slope = layout.swath_edges[orbit]
    cy = (layout.aoi[1] + layout.aoi[3]) / 2
    return x_c + slope * (np.asarray(y) - cy)


def in_swath(layout: Layout, orbit: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    side = layout.swath_edges[orbit][0]
    edge = swath_edge_x(layout, orbit, y)
    return x < edge if side == "west" else x > edge


def edge_band(layout: Layout, orbit: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """1.0 inside the over-detection band along the swath edge of ``orbit``, else 0.0."""
    side = layout.swath_edges[orbit][0]
    width = layout.spec.edge_band_frac * (layout.aoi[2] - layout.aoi[0])
    d = swath_edge_x(layout, orbit, y) - x if side == "west" else x - swath_edge_x(layout, orbit, y)
    return ((d >= 0) & (d < width)).astype(np.float64)


# --------------------------------------------------------------------------------------------
# layout


def make_layout(spec: SampleSpec) -> Layout:
    """Place tiles, swaths and datatakes for ``spec``."""
    to_lonlat = _transformer(27700, 4326)
    gx, gy = GREENWICH_27700
    lon0, lat0 = to_lonlat.transform(gx, gy)
    tiles: list[Tile] = []
    for zone in (30, 31):
        tr = _transformer(4326, ZONE_EPSG[zone])
        ex, ny = tr.transform(lon0, lat0)
        half_overlap = spec.overlap_px * RES / 2
        if zone == 30:  # columns end just east of 0° E
            x_right = ex + half_overlap
            x_first = x_right - spec.tile_m - (spec.cols - 1) * spec.stride_m
        else:  # columns start just west of 0° E
            x_first = ex - half_overlap
        x_first = math.floor(x_first / 60.0) * 60.0  # 10, 20 and 60 m grids stay aligned
        y_top = math.floor((ny + (spec.rows * spec.stride_m + spec.overlap_px * RES) / 2) / 60.0) * 60.0
        squares = TILE_SQUARES[zone]
        for r in range(spec.rows):
            for c in range(spec.cols):
                square = squares[(r * spec.cols + c) % len(squares)]
                if spec.rows * spec.cols > len(squares):
                    square = f"{square[0]}{chr(ord('A') + (r * spec.cols + c) % 26)}"
                tiles.append(Tile(zone, ZONE_EPSG[zone], square, x_first + c * spec.stride_m, y_top - r * spec.stride_m, spec.tile_px))

    # The area: a box around Greenwich that the tiles of both zones cover with a margin.
    width = 2 * (spec.cols * spec.stride_m) * 0.8
    height = spec.rows * spec.stride_m * 0.8
    aoi = (
        math.floor((gx - width / 2) / RES) * RES,
        math.floor((gy - height / 2) / RES) * RES,
        math.ceil((gx + width / 2) / RES) * RES,
        math.ceil((gy + height / 2) / RES) * RES,
    )
    w = aoi[2] - aoi[0]
    # R094 covers the west, R137 the east; their edges slant like a descending ground track.
    swath_edges = {94: ("west", gx + 0.22 * w, -0.2), 137: ("east", gx - 0.22 * w, -0.2)}
    urban = (gx + spec.urban_uv[0] * w / 2, gy + spec.urban_uv[1] * (aoi[3] - aoi[1]) / 2, 0.12 * w)

    margin = 3 * spec.cloud_corr_m + spec.tile_m
    lattice_origin = (aoi[0] - margin, aoi[3] + margin)
    lattice_shape = (
        int(math.ceil((aoi[3] - aoi[1] + 2 * margin) / spec.lattice_m)) + 1,
        int(math.ceil((aoi[2] - aoi[0] + 2 * margin) / spec.lattice_m)) + 1,
    )

    datatakes: list[Datatake] = []
    # Each orbit every 5 days, satellites alternating (each satellite every 10 days);
    # R137 passes 3 days after R094, as 43 orbits apart do.
    first = datetime(spec.start.year, spec.start.month, spec.start.day, tzinfo=timezone.utc)
    last = datetime(spec.end.year, spec.end.month, spec.end.day, 23, 59, 59, tzinfo=timezone.utc)
    for orbit, offset_days, clock in ((94, 1, (11, 6, 19)), (137, 4, (11, 3, 51))):
        k = 0
        while True:
            day = first + timedelta(days=offset_days + 5 * k)
            if day > last:
                break
            sensing = day.replace(hour=clock[0], minute=clock[1], second=clock[2])
            satellite = "S2A" if k % 2 == 0 else "S2B"
            days_since = (sensing - datetime(2024, 1, 1, tzinfo=timezone.utc)).days
            absolute = (44_500 if satellite == "S2A" else 35_900) + int(days_since * 14.3) + orbit
            datatakes.append(Datatake(0, satellite, orbit, sensing, absolute))
            k += 1
    datatakes.sort(key=lambda d: d.sensing)
    if spec.max_datatakes:
        datatakes = datatakes[: spec.max_datatakes]
    for i, d in enumerate(datatakes):
        d.index = i
    return Layout(spec, aoi, tiles, datatakes, swath_edges, urban, lattice_origin, lattice_shape)


def tile_positions_27700(tile: Tile, rows: slice, res: float = RES) -> tuple[np.ndarray, np.ndarray]:
    """EPSG:27700 positions of the pixel centres of ``rows`` of ``tile`` (at ``res`` metres).

    The transform is exact on a 33-point lattice per side and bilinear between its nodes
    (errors of a few millimetres over a tile): far cheaper than projecting every pixel.
    """
    from scipy.ndimage import map_coordinates

    n = int(round(tile.size_px * RES / res))
    tr = _transformer(tile.epsg, 27700)
    nodes = 33
    t = np.linspace(0, n, nodes)
    ex, ny = np.meshgrid(tile.x0 + t * res, tile.y0 - t * res)
    bx, by = tr.transform(ex, ny)
    r = np.arange(rows.start, rows.stop) + 0.5
    c = np.arange(n) + 0.5
    rr, cc = np.meshgrid(r * (nodes - 1) / n, c * (nodes - 1) / n, indexing="ij")
    x = map_coordinates(bx, [rr.ravel(), cc.ravel()], order=1).reshape(rr.shape)
    y = map_coordinates(by, [rr.ravel(), cc.ravel()], order=1).reshape(rr.shape)
    return x, y


def _polygon_27700_to(geom, epsg: int):
    from shapely.ops import transform
    tr = _transformer(27700, epsg)
    return transform(tr.transform, geom)


def _tile_polygon_27700(tile: Tile):
    return _tile_polygon_cached(tile.epsg, tile.x0, tile.y0, tile.size_px)


@lru_cache(maxsize=256)
def _tile_polygon_cached(epsg: int, x0: float, y0: float, size_px: int):
    from shapely.geometry import Polygon

    tr = _transformer(epsg, 27700)
    side = size_px * RES
    t = np.linspace(0, side, 21)
    xs = np.concatenate([x0 + t, np.full(21, x0 + side), x0 + side - t, np.full(21, x0)])
    ys = np.concatenate([np.full(21, y0), y0 - t, np.full(21, y0 - side), y0 - side + t])
    bx, by = tr.transform(xs, ys)
    return Polygon(zip(bx, by))


def _swath_polygon(layout: Layout, orbit: int):
    from shapely.geometry import Polygon

    big = 1e6
    side = layout.swath_edges[orbit][0]
    y0, y1 = layout.aoi[1] - big, layout.aoi[3] + big
    e0, e1 = swath_edge_x(layout, orbit, y0), swath_edge_x(layout, orbit, y1)
    if side == "west":
        return Polygon([(e0 - big * 3, y0), (e0, y0), (e1, y1), (e1 - big * 3, y1)])
    return Polygon([(e0, y0), (e0 + big * 3, y0), (e1 + big * 3, y1), (e1, y1)])


# --------------------------------------------------------------------------------------------
# writing


@dataclass
class Product:
    """One STAC item to write: a tile of a datatake, possibly only part of it."""

    datatake: Datatake
    tile: Tile
    sequence: int = 0
    baseline: str = "05.10"
    part: str = "all"  # "all", "north", "south": split datastrips carry part of the tile
    generated: datetime | None = None

    @property
    def item_id(self) -> str:
        return f"{self.datatake.satellite}_{self.tile.code}_{self.datatake.sensing:%Y%m%d}_{self.sequence}_L2A"

    @property
    def folder(self) -> str:
        t = self.tile
        d = self.datatake.sensing
        return f"sentinel-2-l2a/{t.zone}/U/{t.square}/{d.year}/{d.month}/{self.item_id}"


def _split_y(tile: Tile) -> float:
    """Northing (in the tile's CRS) where a split datatake's two datastrips meet."""
    return tile.y0 - 0.55 * tile.size_px * RES


def _part_mask(product: Product, rows: slice) -> np.ndarray | None:
    if product.part == "all":
        return None
    tile = product.tile
    ys = tile.y0 - (np.arange(rows.start, rows.stop) + 0.5) * RES
    north = ys >= _split_y(tile)
    keep = north if product.part == "north" else ~north
    return np.repeat(keep[:, None], tile.size_px, axis=1)


def _write_cog(path: Path, array: np.ndarray, tile: Tile, res: float, nodata: int | None, resampling: str, blocksize: int) -> None:
    import rasterio

    path.parent.mkdir(parents=True, exist_ok=True)
    count = array.shape[0] if array.ndim == 3 else 1
    profile = dict(
        driver="COG",
        width=array.shape[-1],
        height=array.shape[-2],
        count=count,
        dtype=array.dtype.name,
        crs=f"EPSG:{tile.epsg}",
        transform=tile.transform(res),
        compress="DEFLATE",
        blocksize=blocksize,
        overview_resampling=resampling,
        overviews="AUTO",
        BIGTIFF="IF_SAFER",
    )
    if nodata is not None:
        profile["nodata"] = nodata
    tmp = path.with_suffix(".tmp.tif")
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(array if array.ndim == 3 else array[None])
    tmp.replace(path)


def render_scl(layout: Layout, fields: DatatakeFields, product: Product, strip_rows: int = 1024) -> np.ndarray:
    """The SCL array (uint8, 20 m) of one product."""
    tile = product.tile
    out = np.empty((tile.size_px, tile.size_px), dtype=np.uint8)
    for r0 in range(0, tile.size_px, strip_rows):
        rows = slice(r0, min(tile.size_px, r0 + strip_rows))
        x, y = tile_positions_27700(tile, rows)
        scl = fields.classify(x, y)
        scl[~in_swath(layout, product.datatake.orbit, x, y)] = SCL_NODATA
        part = _part_mask(product, rows)
        if part is not None:
            scl[~part] = SCL_NODATA
        out[rows] = scl
    return out


_REFLECTANCE = {  # red, green, blue surface reflectance by SCL class
    SCL_DEFECTIVE: (0.0, 0.0, 0.0),
    SCL_DARK: (0.02, 0.02, 0.02),
    SCL_SHADOW: (0.02, 0.025, 0.03),
    SCL_VEGETATION: (0.035, 0.06, 0.03),
    SCL_NOT_VEGETATED: (0.11, 0.10, 0.09),
    SCL_WATER: (0.015, 0.025, 0.035),
    SCL_UNCLASSIFIED: (0.06, 0.06, 0.05),
    SCL_CLOUD_MEDIUM: (0.45, 0.46, 0.48),
    SCL_CLOUD_HIGH: (0.75, 0.76, 0.78),
    SCL_CIRRUS: (0.18, 0.19, 0.22),
    SCL_SNOW: (0.85, 0.87, 0.90),
}


def render_truecolor(scl: np.ndarray, seed: int) -> np.ndarray:
    """Red, green, blue (uint16, reflectance × 10000, BOA offset already applied) at 10 m."""
    up = np.repeat(np.repeat(scl, 2, axis=0), 2, axis=1)
    rgb = np.zeros((3,) + up.shape, dtype=np.float32)
    for cls, refl in _REFLECTANCE.items():
        m = up == cls
        for b in range(3):
            rgb[b][m] = refl[b]
    rng = np.random.default_rng(seed)
    rgb *= 1 + 0.08 * rng.standard_normal(up.shape).astype(np.float32)
    dn = np.clip(rgb * 10000, 1, 65535).astype(np.uint16)
    dn[:, up == SCL_NODATA] = 0
    return dn


def _class_counts(scl: np.ndarray) -> dict[int, int]:
    counts = np.bincount(scl.ravel(), minlength=12)
    return {i: int(c) for i, c in enumerate(counts)}


def _footprint_lonlat(layout: Layout, product: Product):
    from shapely.geometry import box, mapping
    from shapely.ops import transform
    poly = _tile_polygon_27700(product.tile).intersection(_swath_polygon(layout, product.datatake.orbit))
    if product.part != "all":
        tile = product.tile
        ys = _split_y(tile)
        half = (
            box(tile.x0, ys, tile.x0 + tile.size_px * RES, tile.y0)
            if product.part == "north"
            else box(tile.x0, tile.y0 - tile.size_px * RES, tile.x0 + tile.size_px * RES, ys)
        )
        poly = poly.intersection(_tile_half_27700(tile, half))
    tr = _transformer(27700, 4326)
    geom = transform(tr.transform, poly.buffer(0).simplify(2.0))
    return mapping(geom), geom.bounds


def _tile_half_27700(tile: Tile, half_utm):
    from shapely.ops import transform
    tr = _transformer(tile.epsg, 27700)
    return transform(tr.transform, _densify(half_utm))


def _densify(poly, step: float = 200.0):
    from shapely.geometry import Polygon

    coords = list(poly.exterior.coords)
    out = []
    for (x0, y0), (x1, y1) in zip(coords[:-1], coords[1:]):
        n = max(1, int(math.hypot(x1 - x0, y1 - y0) / step))
        for i in range(n):
            out.append((x0 + (x1 - x0) * i / n, y0 + (y1 - y0) * i / n))
    return Polygon(out)


def _item(layout: Layout, product: Product, counts: dict[int, int], truecolor: bool) -> dict:
    d, tile = product.datatake, product.tile
    total = tile.size_px**2
    nodata = counts[SCL_NODATA]
    data = max(1, total - nodata)

    def pct(*classes: int) -> float:
        return round(100.0 * sum(counts[c] for c in classes) / data, 6)

    geometry, bounds = _footprint_lonlat(layout, product)
    # tiles further north are acquired earlier on a descending pass
    when = d.sensing + timedelta(seconds=(tile.y0 - 5_710_000) / -7000.0)
    generated = product.generated or (d.sensing + timedelta(hours=1, minutes=40))
    baseline_digits = product.baseline.replace(".", "")
    uri = (
        f"{d.satellite}_MSIL2A_{d.sensing:%Y%m%dT%H%M%S}_N{baseline_digits}_R{d.orbit:03d}_T{tile.code}_"
        f"{generated:%Y%m%dT%H%M%S}.SAFE"
    )
    datastrip_start = d.sensing if product.part != "south" else d.sensing + timedelta(seconds=23)
    datastrip = f"{d.satellite}_OPER_MSI_L2A_DS_2APS_{generated:%Y%m%dT%H%M%S}_S{datastrip_start:%Y%m%dT%H%M%S}_N{product.baseline}"
    scl_tr = tile.transform(RES)
    assets = {
        "scl": {
            "href": f"{product.folder}/SCL.tif",
            "type": "image/tiff; application=geotiff; profile=cloud-optimized",
            "title": "Scene classification map (SCL)",
            "gsd": 20,
            "proj:shape": [tile.size_px, tile.size_px],
            "proj:transform": [scl_tr.a, scl_tr.b, scl_tr.c, scl_tr.d, scl_tr.e, scl_tr.f],
            "raster:bands": [{"nodata": 0, "data_type": "uint8", "spatial_resolution": 20}],
            "roles": ["data"],
        }
    }
    if truecolor:
        tr10 = tile.transform(10.0)
        for key, band, title in (("red", "B04", "Red (band 4) - 10m"), ("green", "B03", "Green (band 3) - 10m"), ("blue", "B02", "Blue (band 2) - 10m")):
            assets[key] = {
                "href": f"{product.folder}/{band}.tif",
                "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                "title": title,
                "eo:bands": [{"name": band, "common_name": key}],
                "gsd": 10,
                "proj:shape": [tile.size_px * 2, tile.size_px * 2],
                "proj:transform": [tr10.a, tr10.b, tr10.c, tr10.d, tr10.e, tr10.f],
                "raster:bands": [{"nodata": 0, "data_type": "uint16", "spatial_resolution": 10, "scale": 0.0001, "offset": 0}],
                "roles": ["data", "reflectance"],
            }
    props = {
        "created": generated.isoformat().replace("+00:00", "Z"),
        "platform": "sentinel-2a" if d.satellite == "S2A" else "sentinel-2b",
        "constellation": "sentinel-2",
        "instruments": ["msi"],
        "eo:cloud_cover": pct(SCL_CLOUD_MEDIUM, SCL_CLOUD_HIGH, SCL_CIRRUS),
        "proj:epsg": tile.epsg,
        "mgrs:utm_zone": tile.zone,
        "mgrs:latitude_band": "U",
        "mgrs:grid_square": tile.square,
        "grid:code": f"MGRS-{tile.code}",
        "view:sun_azimuth": 160.0 + (d.sensing.timetuple().tm_yday % 30),
        "view:sun_elevation": 15.0 + 47.0 * math.sin(math.pi * d.sensing.timetuple().tm_yday / 366),
        "s2:degraded_msi_data_percentage": 0,
        "s2:nodata_pixel_percentage": round(100.0 * nodata / total, 6),
        "s2:saturated_defective_pixel_percentage": pct(SCL_DEFECTIVE),
        "s2:dark_features_percentage": pct(SCL_DARK),
        "s2:cloud_shadow_percentage": pct(SCL_SHADOW),
        "s2:vegetation_percentage": pct(SCL_VEGETATION),
        "s2:not_vegetated_percentage": pct(SCL_NOT_VEGETATED),
        "s2:water_percentage": pct(SCL_WATER),
        "s2:unclassified_percentage": pct(SCL_UNCLASSIFIED),
        "s2:medium_proba_clouds_percentage": pct(SCL_CLOUD_MEDIUM),
        "s2:high_proba_clouds_percentage": pct(SCL_CLOUD_HIGH),
        "s2:thin_cirrus_percentage": pct(SCL_CIRRUS),
        "s2:snow_ice_percentage": pct(SCL_SNOW),
        "s2:product_type": "S2MSI2A",
        "s2:processing_baseline": product.baseline,
        "s2:product_uri": uri,
        "s2:generation_time": generated.strftime("%Y-%m-%dT%H:%M:%S.000000Z"),
        "s2:datatake_id": f"{d.datatake_id}_N{product.baseline}",
        "s2:datatake_type": "INS-NOBS",
        "s2:datastrip_id": datastrip,
        "s2:granule_id": f"{d.satellite}_OPER_MSI_L2A_TL_2APS_{generated:%Y%m%dT%H%M%S}_A{d.absolute_orbit:06d}_T{tile.code}_N{product.baseline}",
        "s2:reflectance_conversion_factor": round(1 + 0.0334 * math.cos(2 * math.pi * (d.sensing.timetuple().tm_yday - 4) / 365.25), 9),
        "s2:sequence": str(product.sequence),
        "datetime": when.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
        "earthsearch:s3_path": f"s3://sentinel-cogs/{product.folder}",
        "earthsearch:payload_id": f"roda-sentinel2/workflow-sentinel2-to-stac/{hashlib.md5(product.item_id.encode()).hexdigest()}",
        "earthsearch:boa_offset_applied": True,
        "processing:software": {"sentinel2-to-stac": "0.1.1"},
        "updated": generated.isoformat().replace("+00:00", "Z"),
    }
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": [
            "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
            "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
            "https://stac-extensions.github.io/mgrs/v1.0.0/schema.json",
            "https://stac-extensions.github.io/grid/v1.0.0/schema.json",
            "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
            "https://stac-extensions.github.io/view/v1.0.0/schema.json",
        ],
        "id": product.item_id,
        "properties": props,
        "geometry": geometry,
        "links": [],
        "assets": assets,
        "bbox": [round(v, 9) for v in bounds],
        "collection": "sentinel-2-l2a",
    }


def _products(layout: Layout) -> list[Product]:
    """Every product of every datatake, with one split datatake and one reprocessed duplicate."""
    from shapely.geometry import box

    aoi_box = box(*layout.aoi)
    products: list[Product] = []
    for d in layout.datatakes:
        swath = _swath_polygon(layout, d.orbit)
        for tile in layout.tiles:
            poly = _tile_polygon_27700(tile)
            covered = poly.intersection(swath)
            if covered.area < 0.02 * poly.area or not covered.intersects(aoi_box):
                continue
            products.append(Product(d, tile))
    # One datatake reaches the archive as two datastrips (two partial products of one tile)
    # and one product was reprocessed with a newer baseline (a duplicate of the same pixels).
    split_at = next(i for i, p in enumerate(products) if p.datatake.index >= len(layout.datatakes) // 3 and p.datatake.orbit == 94)
    original = products[split_at]
    products[split_at] = Product(original.datatake, original.tile, 0, original.baseline, "north")
    products.insert(split_at + 1, Product(original.datatake, original.tile, 1, original.baseline, "south"))
    dup_at = next(i for i, p in enumerate(products) if p.datatake.index >= (2 * len(layout.datatakes)) // 3 and p.datatake.orbit == 137)
    base = products[dup_at]
    products.insert(
        dup_at + 1,
        Product(base.datatake, base.tile, 1, "05.11", "all", generated=base.datatake.sensing + timedelta(days=200)),
    )
    return products


def _render_datatake(spec: SampleSpec, work: str, index: int, products: list[Product], truecolor: bool) -> list[tuple[dict, dict]]:
    """Render and write every product of one datatake; (item, truth) for those with data.

    Runs in a worker process too, so it rebuilds the (deterministic) layout from the spec.
    """
    layout = make_layout(spec)
    datatake = layout.datatakes[index]
    fields_ = DatatakeFields(layout, datatake)
    out = []
    for product in products:
        product = Product(datatake, product.tile, product.sequence, product.baseline, product.part, product.generated)
        scl = render_scl(layout, fields_, product)
        counts = _class_counts(scl)
        if counts[SCL_NODATA] == scl.size:
            continue
        folder = Path(work) / product.folder
        _write_cog(folder / "SCL.tif", scl, product.tile, RES, 0, "NEAREST", spec.blocksize)
        if truecolor:
            rgb = render_truecolor(scl, seed=spec.seed * 7 + index * 31 + product.sequence)
            for band, i in (("B04", 0), ("B03", 1), ("B02", 2)):
                _write_cog(folder / f"{band}.tif", rgb[i], product.tile, 10.0, 0, "AVERAGE", spec.blocksize)
        truth = {
            "datatake": datatake.datatake_id, "tile": product.tile.code, "epsg": product.tile.epsg,
            "orbit": datatake.orbit, "part": product.part, "baseline": product.baseline, "class_counts": counts,
        }
        out.append((_item(layout, product, counts, truecolor), truth))
    return out


def generate(out_dir: str | Path, spec: SampleSpec | None = None, progress: Progress | None = None, workers: int = 1) -> Path:
    """Write a sample archive for ``spec`` into ``out_dir``; return its folder.

    A finished archive (``archive.json`` with the same spec and generator version) is reused as
    it is; anything else in ``out_dir`` is replaced. Written to a temporary sibling first and
    moved into place at the end, so a cancelled run leaves no half-written archive.
    ``workers`` > 1 renders datatakes in that many processes (full-size archives).
    """
    spec = spec or SampleSpec.small()
    progress = progress or NullProgress()
    out = Path(out_dir)
    manifest = out / "archive.json"
    spec_dict = json.loads(json.dumps(asdict(spec), default=str))
    if manifest.exists():
        try:
            done = json.loads(manifest.read_text())
            if done["spec"] == spec_dict and done.get("generator_version") == GENERATOR_VERSION:
                return out
        except (ValueError, KeyError):
            pass
    work = out.with_name(out.name + ".partial")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    pool = None
    try:
        layout = make_layout(spec)
        by_datatake: dict[int, list[Product]] = {}
        for product in _products(layout):
            by_datatake.setdefault(product.datatake.index, []).append(product)
        tc = {d.index for d in layout.datatakes if spec.truecolor_every > 0 and d.index % spec.truecolor_every == 0}
        jobs = [(spec, str(work), i, by_datatake[i], i in tc) for i in sorted(by_datatake)]
        results: dict[int, list] = {}
        if workers > 1:
            import concurrent.futures as cf
            import multiprocessing

            pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
            futures = {pool.submit(_render_datatake, *job): job[2] for job in jobs}
            for n, future in enumerate(cf.as_completed(futures), start=1):
                check_cancel(progress)
                results[futures[future]] = future.result()
                progress.set_progress(90.0 * n / len(jobs))
        else:
            for n, job in enumerate(jobs, start=1):
                check_cancel(progress)
                results[job[2]] = _render_datatake(*job)
                progress.set_progress(90.0 * n / len(jobs))
        items, scene_truth = [], {}
        for i in sorted(results):
            for item, truth in results[i]:
                items.append(item)
                scene_truth[item["id"]] = truth
        _write_stac(work, items, layout)
        check_cancel(progress)
        _write_truth(work, layout, scene_truth)
        progress.set_progress(97.0)
        _write_zones(work, layout)
        (work / "archive.json").write_text(
            json.dumps({"spec": spec_dict, "generator_version": GENERATOR_VERSION, "items": len(items),
                        "aoi_27700": layout.aoi, "datatakes": len(layout.datatakes)}, indent=1)
        )
    except BaseException:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(work, ignore_errors=True)
        raise
    if pool is not None:
        pool.shutdown(wait=True)
    if out.exists():
        shutil.rmtree(out)
    work.rename(out)
    progress.set_progress(100.0)
    return out


def _write_stac(work: Path, items: list[dict], layout: Layout) -> None:
    (work / "items").mkdir(exist_ok=True)
    lons = [it["bbox"][0] for it in items] + [it["bbox"][2] for it in items]
    lats = [it["bbox"][1] for it in items] + [it["bbox"][3] for it in items]
    times = sorted(it["properties"]["datetime"] for it in items)
    collection = {
        "type": "Collection",
        "stac_version": "1.0.0",
        "id": "sentinel-2-l2a",
        "title": "Sentinel-2 Level 2A (sample archive)",
        "description": "Synthetic Sentinel-2 L2A scenes around Greenwich in the form of Earth Search v1 items.",
        "license": "proprietary",
        "extent": {
            "spatial": {"bbox": [[min(lons), min(lats), max(lons), max(lats)]]},
            "temporal": {"interval": [[times[0], times[-1]]]},
        },
        "links": [],
    }
    (work / "items" / "collection.json").write_text(json.dumps(collection, indent=1))
    (work / "items" / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": items}))


def _truth_grid(layout: Layout):
    from rasterio.transform import from_origin

    xmin, ymin, xmax, ymax = layout.aoi
    width = int(round((xmax - xmin) / RES))
    height = int(round((ymax - ymin) / RES))
    return from_origin(xmin, ymax, RES, RES), width, height


def _write_truth(work: Path, layout: Layout, scene_truth: dict) -> None:
    import rasterio

    truth = work / "truth"
    truth.mkdir(exist_ok=True)
    transform, width, height = _truth_grid(layout)
    cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    x = transform.c + cols * RES
    y = transform.f - rows * RES
    p = (100.0 * true_probability(x, y, layout.aoi)).astype(np.float32)
    with rasterio.open(
        truth / "probability_27700.tif", "w", driver="GTiff", width=width, height=height, count=1, dtype="float32",
        crs="EPSG:27700", transform=transform, compress="DEFLATE", tiled=True, nodata=-1,
    ) as dst:
        dst.write(p[None])
        dst.update_tags(units="percent", description="true per-pixel cloud probability")
    urban = np.zeros_like(p)
    ux, uy, ur = layout.urban
    urban[(x - ux) ** 2 + (y - uy) ** 2 < ur**2] = 1
    with rasterio.open(
        truth / "urban_fraction_27700.tif", "w", driver="GTiff", width=width, height=height, count=1, dtype="float32",
        crs="EPSG:27700", transform=transform, compress="DEFLATE", tiled=True,
    ) as dst:
        dst.write(urban[None])
    (truth / "scenes.json").write_text(json.dumps(scene_truth, indent=0))
    info = {
        "aoi_27700": layout.aoi,
        "swath_edges": {str(k): v for k, v in layout.swath_edges.items()},
        "urban_disc_27700": layout.urban,
        "tiles": [{"code": t.code, "epsg": t.epsg, "x0": t.x0, "y0": t.y0, "size_px": t.size_px} for t in layout.tiles],
        "datatakes": [{"id": d.datatake_id, "orbit": d.orbit, "sensing": d.sensing.isoformat()} for d in layout.datatakes],
        "spec": json.loads(json.dumps(asdict(layout.spec), default=str)),
    }
    (truth / "layout.json").write_text(json.dumps(info, indent=1))


def _write_zones(work: Path, layout: Layout) -> None:
    """Voronoi small areas with LSOA-like codes, and their true probability (area mean of p)."""
    import geopandas as gpd
    from rasterio import features
    from rasterio.transform import from_origin
    from shapely.geometry import MultiPoint, box
    from shapely.ops import voronoi_diagram

    spec = layout.spec
    rng = np.random.default_rng(spec.seed + 99)
    xmin, ymin, xmax, ymax = layout.aoi
    # denser in the "urban" west, as small areas are where people live
    pts = []
    while len(pts) < spec.n_zones:
        x, y = rng.uniform(xmin, xmax), rng.uniform(ymin, ymax)
        ux, uy, ur = layout.urban
        if (x - ux) ** 2 + (y - uy) ** 2 < (2 * ur) ** 2 or rng.random() < 0.5:
            pts.append((x, y))
    area = box(*layout.aoi)
    cells = [c.intersection(area) for c in voronoi_diagram(MultiPoint(pts), envelope=area).geoms]
    cells = [c for c in cells if not c.is_empty and c.area > 0]
    cells.sort(key=lambda c: (-round(c.centroid.y, -2), c.centroid.x))
    codes = [f"E01{1 + i:06d}" for i in range(len(cells))]
    gdf = gpd.GeoDataFrame({"code": codes, "name": [f"Sample small area {i + 1:03d}" for i in range(len(cells))]}, geometry=cells, crs="EPSG:27700")
    (work / "zones").mkdir(exist_ok=True)
    gdf.to_file(work / "zones" / "small_areas.gpkg", layer="small_areas", driver="GPKG")

    # Mean of the continuous p over each polygon, on a grid fine enough for the zones' size.
    step = max(4.0, math.sqrt((xmax - xmin) * (ymax - ymin) / 20e6))
    width, height = int(math.ceil((xmax - xmin) / step)), int(math.ceil((ymax - ymin) / step))
    transform = from_origin(xmin, ymax, step, step)
    ids = features.rasterize(((g, i + 1) for i, g in enumerate(gdf.geometry)), out_shape=(height, width), transform=transform, fill=0, dtype="int32")
    cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    p = 100.0 * true_probability(xmin + cols * step, ymax - rows * step, layout.aoi)
    sums = np.bincount(ids.ravel(), weights=p.ravel(), minlength=len(cells) + 1)
    counts = np.bincount(ids.ravel(), minlength=len(cells) + 1)
    with open(work / "truth" / "small_areas_truth.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["code", "true_cloud_prob_pct", "area_m2"])
        for i, (code, geom) in enumerate(zip(codes, gdf.geometry)):
            mean = sums[i + 1] / counts[i + 1] if counts[i + 1] else float("nan")
            w.writerow([code, f"{mean:.4f}", f"{geom.area:.1f}"])


def observation_counts(
    spec: SampleSpec, crs_epsg: int, transform, shape: tuple[int, int],
    cloud_classes: tuple[int, ...] = (SCL_CLOUD_MEDIUM, SCL_CLOUD_HIGH, SCL_CIRRUS),
    invalid_classes: tuple[int, ...] = (SCL_NODATA, SCL_DEFECTIVE), datatakes: list[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The generator's own valid and cloudy counts on a grid, from its in-memory scenes.

    The rule an observation follows: per acquisition (datatake), a grid pixel takes the SCL
    pixel that contains its centre (exact transform) from the first product, in order of
    newest processing baseline then item id, whose pixel there is valid; an acquisition counts
    once. ``datatakes`` restricts the count to those datatake indices.
    """
    from pyproj import Transformer

    layout = make_layout(spec)
    rows, cols = shape
    cc, rr = np.meshgrid(np.arange(cols) + 0.5, np.arange(rows) + 0.5)
    gx = transform.c + cc * transform.a + rr * transform.b
    gy = transform.f + cc * transform.d + rr * transform.e
    coords = {}
    for epsg in {t.epsg for t in layout.tiles}:
        coords[epsg] = Transformer.from_crs(crs_epsg, epsg, always_xy=True).transform(gx, gy)
    valid = np.zeros(shape, np.uint16)
    cloudy = np.zeros(shape, np.uint16)
    by_datatake: dict[int, list[Product]] = {}
    for product in _products(layout):
        by_datatake.setdefault(product.datatake.index, []).append(product)
    for index, products in sorted(by_datatake.items()):
        if datatakes is not None and index not in datatakes:
            continue
        fields_ = DatatakeFields(layout, layout.datatakes[index])
        products = sorted(products, key=lambda p: (-float(p.baseline), p.item_id))
        value = np.zeros(shape, np.uint8)
        filled = np.zeros(shape, bool)
        for product in products:
            tile = product.tile
            x, y = coords[tile.epsg]
            col = np.floor((x - tile.x0) / RES).astype(np.int64)
            row = np.floor((tile.y0 - y) / RES).astype(np.int64)
            inside = (col >= 0) & (col < tile.size_px) & (row >= 0) & (row < tile.size_px) & ~filled
            if not inside.any():
                continue
            scl = render_scl(layout, fields_, product)
            v = scl[row[inside], col[inside]]
            ok = ~np.isin(v, invalid_classes)
            idx = np.flatnonzero(inside)[ok]
            value.flat[idx] = v[ok]
            filled.flat[idx] = True
        valid += filled
        cloudy += filled & np.isin(value, cloud_classes)
    return valid, cloudy


def aoi_lonlat(archive: str | Path) -> tuple[float, float, float, float]:
    """The archive's area as (west, south, east, north) degrees."""
    info = json.loads((Path(archive) / "archive.json").read_text())
    xmin, ymin, xmax, ymax = info["aoi_27700"]
    tr = _transformer(27700, 4326)
    return tr.transform_bounds(xmin, ymin, xmax, ymax)


def main(argv: Iterable[str] | None = None) -> None:
    """``python -m core.sample_archive OUT [--full] [--max-datatakes N]``."""
    import argparse

    parser = argparse.ArgumentParser(description="Write the Cloud Probability sample archive.")
    parser.add_argument("out")
    parser.add_argument("--full", action="store_true", help="real-size 5490×5490 tiles")
    parser.add_argument("--max-datatakes", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="processes rendering datatakes")
    args = parser.parse_args(list(argv) if argv is not None else None)
    spec = SampleSpec.full(max_datatakes=args.max_datatakes) if args.full else SampleSpec.small(max_datatakes=args.max_datatakes)
    path = generate(args.out, spec, workers=args.workers)
    print(path)


if __name__ == "__main__":
    main()
