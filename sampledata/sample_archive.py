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
* a Sen2Cor-like cloud probability (``cloud`` asset, ``CLD_20m.tif``, 0–100 %) drawn from the
  same fields: high and rising with the cloud's opacity under cloud, medium on the urban false
  clouds, mostly 0 (sometimes a few percent) over clear ground, 0 where the SCL has no data.
  Its expected value per observation is :func:`expected_cloud_value` of ``p`` (outside the
  artefacts), the truth of the "mean cloud probability" measure;
* STAC items in the form of Earth Search v1 Collection 1 (``sentinel-2-c1-l2a``: ids
  ``S2B_T30UYC_20240106T110619_L2A``, ``proj:code``, assets ``scl`` and ``cloud``), including one
  datatake split into two partial products and one reprocessed duplicate (another baseline,
  same pixels).

Outputs under the archive folder: ``items/collection.json``, ``items/items.json``, the COGs, ``zones/``
(small-area polygons with LSOA-like codes), and ``truth/`` (the probability raster and the
expected mean cloud probability raster in EPSG:27700, per-zone truth of both measures, per-item
class counts, the spec). Asset hrefs are relative to the archive folder; whoever serves it
makes them absolute (``scripts/servers.py``).
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

from ..core.progress import NullProgress, Progress, check_cancel

SCL_NODATA, SCL_DEFECTIVE, SCL_DARK, SCL_SHADOW, SCL_VEGETATION, SCL_NOT_VEGETATED = 0, 1, 2, 3, 4, 5
SCL_WATER, SCL_UNCLASSIFIED, SCL_CLOUD_MEDIUM, SCL_CLOUD_HIGH, SCL_CIRRUS, SCL_SNOW = 6, 7, 8, 9, 10, 11

GREENWICH_27700 = (538_900.0, 177_600.0)  # 0° E, 51.48° N, on the British National Grid
RES = 20.0  # metres, SCL resolution
GENERATOR_VERSION = 3  # bump when the output changes for the same spec: cached archives are rebuilt
ZONE_EPSG = {30: 32630, 31: 32631}
TILE_SQUARES = {30: ["YC", "YD", "XC", "XD"], 31: ["CT", "CU", "DT", "DU"]}
COLLECTION = "sentinel-2-c1-l2a"  # Earth Search v1 Collection 1: the one with the ``cloud`` asset

# The ``cloud`` asset (Sen2Cor's CLD, percent) of one observation:
# * cloudy pixels (Φ(g) < q): round(CLOUD_LOW + CLOUD_SPAN · opacity); the opacity (q − z)/q of a
#   cloudy pixel is uniform on (0, 1], so the mean is CLOUD_LOW + CLOUD_SPAN/2 = 65 %;
# * urban false clouds (clear, classified SCL 8): uniform on the integers FALSE_CLOUD_RANGE (mean 50 %);
# * other clear pixels: 0, except a share CLEAR_NOISE_RATE uniform on 1…CLEAR_NOISE_MAX (mean
#   (1 + CLEAR_NOISE_MAX)/2 = 10 %), i.e. 2 % on average;
# * 0 where the SCL is 0 (no data). Earth Search declares nodata 0 for it, but 0 % is a real value.
BOA_OFFSET_DN = 1000  # added to L2A reflectance digital numbers from baseline 04.00 on
CLOUD_LOW, CLOUD_SPAN = 30, 70
FALSE_CLOUD_RANGE = (35, 65)
CLEAR_NOISE_RATE, CLEAR_NOISE_MAX = 0.2, 19


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


def expected_cloud_value(p_fraction):
    """Expected ``cloud`` value (percent) of one observation of a pixel of true probability ``p``.

    Outside the artefacts (orbit-edge band, urban disc) a pixel is cloudy with probability
    ``p``; a cloudy observation is worth 65 % on average and a clear one 2 %, so

        E[cloud] = 100 · (0.65 · p + 0.02 · (1 − p))   percent,  p a fraction 0–1.

    This is the truth of the "mean cloud probability" measure (``truth/mean_cloud_probability_27700.tif``).
    """
    p = np.asarray(p_fraction, dtype=np.float64)
    cloudy_mean = (CLOUD_LOW + CLOUD_SPAN / 2) / 100.0  # 0.65
    clear_mean = CLEAR_NOISE_RATE * (1 + CLEAR_NOISE_MAX) / 2 / 100.0  # 0.02
    return 100.0 * (cloudy_mean * p + clear_mean * (1.0 - p))


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


def _gaussian_wrap(white: np.ndarray, sigma: float) -> np.ndarray:
    """``scipy.ndimage.gaussian_filter(white, sigma, mode="wrap")`` as one circular convolution by FFT.

    The same separable kernel (scipy's, truncated at 4 σ and normalised); equal to the direct
    filter to ~1e-15, and several times faster on the lattice (the costliest step of a datatake).
    """
    rows, cols = white.shape
    spectrum = np.fft.rfft2(white)
    spectrum *= _wrap_kernel_fft(rows, sigma, False)[:, None] * _wrap_kernel_fft(cols, sigma, True)[None, :]
    return np.fft.irfft2(spectrum, s=white.shape)


@lru_cache(maxsize=16)
def _wrap_kernel_fft(n: int, sigma: float, half: bool) -> np.ndarray:
    radius = int(4.0 * float(sigma) + 0.5)  # scipy.ndimage's truncate=4.0
    x = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (sigma * sigma) * x**2)
    phi /= phi.sum()
    periodic = np.zeros(n)
    np.add.at(periodic, x % n, phi)  # a kernel longer than the lattice wraps onto itself, as mode="wrap" does
    spectrum = np.fft.rfft(periodic) if half else np.fft.fft(periodic)
    spectrum.flags.writeable = False
    return spectrum


class DatatakeFields:
    """The fields of one datatake, evaluated at any EPSG:27700 position."""

    def __init__(self, layout: Layout, datatake: Datatake):
        spec = layout.spec
        self.layout = layout
        self.datatake = datatake
        rng = np.random.default_rng([spec.seed, datatake.index])
        sigma = spec.cloud_corr_m / spec.lattice_m
        white = rng.standard_normal(layout.lattice_shape)
        # 'wrap' keeps the field stationary, so its variance is exactly the theoretical one
        local = _gaussian_wrap(white, sigma) * math.sqrt(4 * math.pi) * sigma
        common = rng.standard_normal()
        self.g = math.sqrt(1 - spec.day_weight) * local + math.sqrt(spec.day_weight) * common
        snow_white = rng.standard_normal(layout.lattice_shape)  # drawn on every day: keeps the stream
        winter = datatake.sensing.month in (12, 1, 2)
        self.snow_day = winter and rng.random() < 0.35
        # the snow field is only used on snow days: filtered when first needed (it is the costliest)
        self._snow_white = snow_white
        self._snow: np.ndarray | None = None
        self.seed = spec.seed * 1_000_003 + datatake.index

    @property
    def snow(self) -> np.ndarray:
        if self._snow is None:
            sigma = 2 * self.layout.spec.cloud_corr_m / self.layout.spec.lattice_m
            self._snow = _gaussian_wrap(self._snow_white, sigma) * math.sqrt(4 * math.pi) * sigma
        return self._snow

    def _lattice(self, field_: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        from scipy.ndimage import map_coordinates

        ox, oy = self.layout.lattice_origin
        lat = self.layout.spec.lattice_m
        cols = (x - ox) / lat
        rows = (oy - y) / lat
        return map_coordinates(field_, [rows.ravel(), cols.ravel()], order=1, mode="nearest").reshape(x.shape)

    def classify(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """SCL classes (uint8) at EPSG:27700 positions; no-data (swath) is applied by the caller."""
        return self.classify_with_cloud(x, y)[0]

    def classify_with_cloud(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """SCL classes and the ``cloud`` probability (both uint8) at EPSG:27700 positions.

        Pointwise: a position's values do not depend on the other positions asked for, so a
        tile rendered whole and a few of its pixels rendered alone agree exactly.
        """
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
        false_cloud = urban & ~cloudy & (u1 < spec.urban_false_cloud)  # clear urban ground taken for cloud

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
        scl[false_cloud] = SCL_CLOUD_MEDIUM
        scl[cloudy & (opacity < 0.2)] = SCL_CIRRUS
        scl[cloudy & (opacity >= 0.2) & (opacity < 0.55)] = SCL_CLOUD_MEDIUM
        scl[cloudy & (opacity >= 0.55)] = SCL_CLOUD_HIGH
        scl[u2 > 0.9997] = SCL_DEFECTIVE

        u3 = _hash01(ix, iy, self.seed + 104_729)
        cloud = np.where(u3 < CLEAR_NOISE_RATE, 1.0 + np.floor(u3 / CLEAR_NOISE_RATE * CLEAR_NOISE_MAX), 0.0)
        lo, hi = FALSE_CLOUD_RANGE
        cloud[false_cloud] = lo + np.floor(u3[false_cloud] * (hi - lo + 1))
        cloud[cloudy] = np.round(CLOUD_LOW + CLOUD_SPAN * opacity[cloudy])
        return scl, np.clip(cloud, 0, 100).astype(np.uint8)


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
    n = int(round(tile.size_px * RES / res))
    rr, cc = np.meshgrid(np.arange(rows.start, rows.stop), np.arange(n), indexing="ij")
    return tile_pixel_positions_27700(tile, rr, cc, res)


def tile_pixel_positions_27700(
    tile: Tile, rows: np.ndarray, cols: np.ndarray, res: float = RES
) -> tuple[np.ndarray, np.ndarray]:
    """EPSG:27700 positions of the centres of the pixels (``rows``, ``cols``) of ``tile``.

    Pointwise, with the same arithmetic as :func:`tile_positions_27700`, so a pixel gets the
    same position whether its whole tile is rendered or only that pixel.
    """
    from scipy.ndimage import map_coordinates

    n = int(round(tile.size_px * RES / res))
    bx, by = _tile_nodes_27700(tile.epsg, tile.x0, tile.y0, n, res)
    nodes = bx.shape[0]
    rr = (np.asarray(rows) + 0.5) * (nodes - 1) / n
    cc = (np.asarray(cols) + 0.5) * (nodes - 1) / n
    x = map_coordinates(bx, [rr.ravel(), cc.ravel()], order=1).reshape(rr.shape)
    y = map_coordinates(by, [rr.ravel(), cc.ravel()], order=1).reshape(rr.shape)
    return x, y


@lru_cache(maxsize=256)
def _tile_nodes_27700(epsg: int, x0: float, y0: float, n: int, res: float) -> tuple[np.ndarray, np.ndarray]:
    """The exact EPSG:27700 positions of a 33 × 33 lattice over a tile (bilinear in between)."""
    tr = _transformer(epsg, 27700)
    nodes = 33
    t = np.linspace(0, n, nodes)
    ex, ny = np.meshgrid(x0 + t * res, y0 - t * res)
    bx, by = tr.transform(ex, ny)
    bx.flags.writeable = False
    by.flags.writeable = False
    return bx, by


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
    def datastrip_start(self) -> datetime:
        """Sensing start of the product's datastrip (Collection 1 names items after it).

        A split datatake's second datastrip starts later; a reprocessed product's datastrip was
        cut anew and starts 2 s earlier, so its id differs from the original's as it must.
        """
        start = self.datatake.sensing
        if self.part == "south":
            return start + timedelta(seconds=23)
        if self.generated is not None:
            return start - timedelta(seconds=2)
        return start

    @property
    def item_id(self) -> str:
        """Earth Search Collection 1 form: ``S2B_T30UYC_20240106T110619_L2A``."""
        return f"{self.datatake.satellite}_T{self.tile.code}_{self.datastrip_start:%Y%m%dT%H%M%S}_L2A"

    @property
    def folder(self) -> str:
        t = self.tile
        d = self.datatake.sensing
        return f"{COLLECTION}/{t.zone}/U/{t.square}/{d.year}/{d.month}/{self.item_id}"


def _split_y(tile: Tile) -> float:
    """Northing (in the tile's CRS) where a split datatake's two datastrips meet."""
    return tile.y0 - 0.55 * tile.size_px * RES


def _part_keep(product: Product, rows: np.ndarray) -> np.ndarray | None:
    """Which of the tile rows ``rows`` (any shape) the product's datastrip covers; None: all."""
    if product.part == "all":
        return None
    tile = product.tile
    ys = tile.y0 - (np.asarray(rows) + 0.5) * RES
    north = ys >= _split_y(tile)
    return north if product.part == "north" else ~north


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
    return render_product(layout, fields, product, strip_rows)[0]


def render_product(
    layout: Layout, fields: DatatakeFields, product: Product, strip_rows: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """The SCL and ``cloud`` arrays (uint8, 20 m, the same grid) of one product."""
    tile = product.tile
    scl = np.empty((tile.size_px, tile.size_px), dtype=np.uint8)
    cloud = np.empty_like(scl)
    for r0 in range(0, tile.size_px, strip_rows):
        strip = np.arange(r0, min(tile.size_px, r0 + strip_rows))
        rows, cols = np.meshgrid(strip, np.arange(tile.size_px), indexing="ij")
        scl[strip], cloud[strip] = render_pixels(layout, fields, product, rows, cols)
    return scl, cloud


def render_pixels(
    layout: Layout, fields: DatatakeFields, product: Product, rows: np.ndarray, cols: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """SCL and ``cloud`` of the product's pixels (``rows``, ``cols``): what its COGs hold there.

    Outside the swath or the product's datastrip the SCL is 0 (no data) and so is ``cloud``.
    """
    x, y = tile_pixel_positions_27700(product.tile, rows, cols)
    scl, cloud = fields.classify_with_cloud(x, y)
    nodata = ~in_swath(layout, product.datatake.orbit, x, y)
    keep = _part_keep(product, rows)
    if keep is not None:
        nodata |= ~keep
    scl[nodata] = SCL_NODATA
    cloud[scl == SCL_NODATA] = 0
    return scl, cloud


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
    """Red, green, blue (uint16) at 10 m: reflectance × 10000 + 1000, as Collection 1 stores them.

    Baselines 04.00 and later add a BOA offset of +1000 to the digital numbers; Collection 1
    keeps it (its items declare ``raster:bands`` scale 0.0001 and offset −0.1, and have no
    ``earthsearch:boa_offset_applied``). 0 stays no data.
    """
    up = np.repeat(np.repeat(scl, 2, axis=0), 2, axis=1)
    rgb = np.zeros((3,) + up.shape, dtype=np.float32)
    for cls, refl in _REFLECTANCE.items():
        m = up == cls
        for b in range(3):
            rgb[b][m] = refl[b]
    rng = np.random.default_rng(seed)
    rgb *= 1 + 0.08 * rng.standard_normal(up.shape).astype(np.float32)
    dn = (np.clip(rgb * 10000, 1, 65535 - BOA_OFFSET_DN) + BOA_OFFSET_DN).astype(np.uint16)
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
    """The product's STAC item, in the form of Earth Search v1 ``sentinel-2-c1-l2a`` items."""
    from shapely.geometry import shape

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
    centre = f"2{d.satellite[-1]}PS"  # processing centre as in real names: 2APS, 2BPS
    stamp, baseline = f"{generated:%Y%m%dT%H%M%S}", f"N{product.baseline}"
    datastrip = f"{d.satellite}_OPER_MSI_L2A_DS_{centre}_{stamp}_S{product.datastrip_start:%Y%m%dT%H%M%S}_{baseline}"
    scl_tr = tile.transform(RES)
    cog = "image/tiff; application=geotiff; profile=cloud-optimized"
    grid20 = {"proj:shape": [tile.size_px, tile.size_px],
              "proj:transform": [scl_tr.a, scl_tr.b, scl_tr.c, scl_tr.d, scl_tr.e, scl_tr.f]}
    assets = {
        "scl": {
            "href": f"{product.folder}/SCL.tif", "type": cog, "title": "Scene classification map (SCL)", "gsd": 20,
            **grid20,
            "raster:bands": [{"nodata": 0, "data_type": "uint8", "spatial_resolution": 20}],
            "roles": ["data"],
        },
        # Sen2Cor's cloud probability (percent); Earth Search declares nodata 0 although 0 % is a value
        "cloud": {
            "href": f"{product.folder}/CLD_20m.tif", "type": cog, "title": "Cloud Probabilities", "gsd": 20,
            **grid20,
            "raster:bands": [{"nodata": 0, "data_type": "uint8", "spatial_resolution": 20}],
            "roles": ["data", "cloud"],
        },
    }
    if truecolor:
        tr10 = tile.transform(10.0)
        for key, band, title, wavelength, fwhm in (("red", "B04", "Red - 10m", 0.665, 0.038),
                                                  ("green", "B03", "Green - 10m", 0.56, 0.045),
                                                  ("blue", "B02", "Blue - 10m", 0.49, 0.098)):
            assets[key] = {
                "href": f"{product.folder}/{band}.tif",
                "type": cog,
                "title": title,
                "eo:bands": [{"name": band, "common_name": key, "center_wavelength": wavelength,
                              "full_width_half_max": fwhm}],
                "gsd": 10,
                "proj:shape": [tile.size_px * 2, tile.size_px * 2],
                "proj:transform": [tr10.a, tr10.b, tr10.c, tr10.d, tr10.e, tr10.f],
                # Collection 1 keeps the +1000 BOA offset in the digital numbers and declares it here
                "raster:bands": [{"nodata": 0, "data_type": "uint16", "spatial_resolution": 10, "scale": 0.0001,
                                  "offset": -BOA_OFFSET_DN / 10000}],
                "roles": ["data", "reflectance"],
            }
    centroid = shape(geometry).centroid
    props = {
        "created": generated.isoformat().replace("+00:00", "Z"),
        "platform": "sentinel-2a" if d.satellite == "S2A" else "sentinel-2b",
        "constellation": "sentinel-2",
        "instruments": ["msi"],
        "eo:cloud_cover": pct(SCL_CLOUD_MEDIUM, SCL_CLOUD_HIGH, SCL_CIRRUS),
        "proj:epsg": tile.epsg,
        "proj:code": f"EPSG:{tile.epsg}",  # projection extension v2's name; Earth Search's newer items carry it
        "proj:centroid": {"lat": round(centroid.y, 5), "lon": round(centroid.x, 5)},
        "mgrs:utm_zone": tile.zone,
        "mgrs:latitude_band": "U",
        "mgrs:grid_square": tile.square,
        "grid:code": f"MGRS-{tile.code}",
        # view:azimuth from the sub-satellite point: R094 passes west of the area, R137 east of it;
        # the area lies near the edge of both swaths (large incidence)
        "view:azimuth": 105.0 if d.orbit == 94 else 285.0,
        "view:incidence_angle": 10.5 if d.orbit == 94 else 9.8,
        "view:sun_azimuth": 160.0 + (d.sensing.timetuple().tm_yday % 30),
        "view:sun_elevation": 15.0 + 47.0 * math.sin(math.pi * d.sensing.timetuple().tm_yday / 366),
        "s2:tile_id": f"{d.satellite}_OPER_MSI_L2A_TL_{centre}_{stamp}_A{d.absolute_orbit:06d}_T{tile.code}_{baseline}",
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
        "s2:reflectance_conversion_factor": round(1 + 0.0334 * math.cos(2 * math.pi * (d.sensing.timetuple().tm_yday - 4) / 365.25), 9),
        "datetime": when.strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z",
        "earthsearch:payload_id": (f"roda-{COLLECTION}/workflow-{COLLECTION}-to-stac/"
                                   f"{hashlib.md5(product.item_id.encode()).hexdigest()}"),
        "storage:platform": "AWS",
        "storage:region": "us-west-2",
        "storage:requester_pays": False,
        "processing:software": {f"{COLLECTION}-to-stac": "v2024.02.01"},
        "updated": generated.isoformat().replace("+00:00", "Z"),
    }
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": [
            "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
            "https://stac-extensions.github.io/grid/v1.1.0/schema.json",
            "https://stac-extensions.github.io/mgrs/v1.0.0/schema.json",
            "https://stac-extensions.github.io/processing/v1.1.0/schema.json",
            "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
            "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
            "https://stac-extensions.github.io/sentinel-2/v1.0.0/schema.json",
            "https://stac-extensions.github.io/storage/v1.0.0/schema.json",
            "https://stac-extensions.github.io/view/v1.0.0/schema.json",
        ],
        "id": product.item_id,
        "properties": props,
        "geometry": geometry,
        "links": [],
        "assets": assets,
        "bbox": [round(v, 9) for v in bounds],
        "collection": COLLECTION,
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
        scl, cloud = render_product(layout, fields_, product)
        counts = _class_counts(scl)
        if counts[SCL_NODATA] == scl.size:
            continue
        folder = Path(work) / product.folder
        _write_cog(folder / "SCL.tif", scl, product.tile, RES, 0, "NEAREST", spec.blocksize)
        # GeoTIFF nodata 0 as Earth Search declares it, though 0 % is a value where the SCL has data
        _write_cog(folder / "CLD_20m.tif", cloud, product.tile, RES, 0, "NEAREST", spec.blocksize)
        if truecolor:
            rgb = render_truecolor(scl, seed=spec.seed * 7 + index * 31 + product.sequence)
            for band, i in (("B04", 0), ("B03", 1), ("B02", 2)):
                _write_cog(folder / f"{band}.tif", rgb[i], product.tile, 10.0, 0, "AVERAGE", spec.blocksize)
        truth = {
            "datatake": datatake.datatake_id, "tile": product.tile.code, "epsg": product.tile.epsg,
            "orbit": datatake.orbit, "part": product.part, "baseline": product.baseline, "class_counts": counts,
            # Σ of the cloud asset (percent) over the pixels where the SCL has data, per SCL class
            "cloud_sums": {i: int(v) for i, v in enumerate(np.bincount(scl.ravel(), cloud.ravel(), minlength=12))},
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
    # the assets every item may carry, as Earth Search's collection lists them (without the grid)
    item_assets = {}
    for item in items:
        for key, asset in item["assets"].items():
            item_assets.setdefault(key, {k: v for k, v in asset.items()
                                         if k not in ("href", "proj:shape", "proj:transform")})
    collection = {
        "type": "Collection",
        "id": COLLECTION,
        "title": "Sentinel-2 Collection 1 Level-2A (sample archive)",
        "description": "Synthetic Sentinel-2 Collection 1 L2A scenes around Greenwich in the form of Earth Search v1 "
                       "sentinel-2-c1-l2a items (SCL and Sen2Cor cloud probability).",
        "stac_version": "1.0.0",
        "stac_extensions": [
            "https://stac-extensions.github.io/item-assets/v1.0.0/schema.json",
            "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
            "https://stac-extensions.github.io/eo/v1.0.0/schema.json",
        ],
        "license": "proprietary",
        "extent": {
            "spatial": {"bbox": [[min(lons), min(lats), max(lons), max(lats)]]},
            "temporal": {"interval": [[times[0], times[-1]]]},
        },
        "summaries": {"platform": ["sentinel-2a", "sentinel-2b"], "constellation": ["sentinel-2"],
                      "instruments": ["msi"]},
        "item_assets": dict(sorted(item_assets.items())),
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
    fraction = true_probability(x, y, layout.aoi)
    p = (100.0 * fraction).astype(np.float32)
    with rasterio.open(
        truth / "probability_27700.tif", "w", driver="GTiff", width=width, height=height, count=1, dtype="float32",
        crs="EPSG:27700", transform=transform, compress="DEFLATE", tiled=True, nodata=-1,
    ) as dst:
        dst.write(p[None])
        dst.update_tags(units="percent", description="true per-pixel cloud probability")
    with rasterio.open(
        truth / "mean_cloud_probability_27700.tif", "w", driver="GTiff", width=width, height=height, count=1,
        dtype="float32", crs="EPSG:27700", transform=transform, compress="DEFLATE", tiled=True, nodata=-1,
    ) as dst:
        dst.write(expected_cloud_value(fraction).astype(np.float32)[None])
        dst.update_tags(units="percent", formula="100 * (0.65 * p + 0.02 * (1 - p))",
                        description="expected cloud asset value of one observation (true mean cloud probability)")
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
    fraction = true_probability(xmin + cols * step, ymax - rows * step, layout.aoi)
    counts = np.bincount(ids.ravel(), minlength=len(cells) + 1)
    means = []
    for value in (100.0 * fraction, expected_cloud_value(fraction)):
        sums = np.bincount(ids.ravel(), weights=value.ravel(), minlength=len(cells) + 1)
        means.append(np.where(counts > 0, sums / np.maximum(counts, 1), np.nan))
    with open(work / "truth" / "small_areas_truth.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["code", "true_cloud_prob_pct", "area_m2", "true_mean_cloud_prob_pct"])
        for i, (code, geom) in enumerate(zip(codes, gdf.geometry)):
            w.writerow([code, f"{means[0][i + 1]:.4f}", f"{geom.area:.1f}", f"{means[1][i + 1]:.4f}"])


def observation_counts(
    spec: SampleSpec, crs_epsg: int, transform, shape: tuple[int, int],
    cloud_classes: tuple[int, ...] = (SCL_CLOUD_MEDIUM, SCL_CLOUD_HIGH, SCL_CIRRUS),
    invalid_classes: tuple[int, ...] = (SCL_NODATA, SCL_DEFECTIVE), datatakes: Iterable[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The generator's own valid and cloudy counts on a grid, from its in-memory scenes.

    The rule an observation follows: per acquisition (datatake), a grid pixel takes the SCL
    pixel that contains its centre (exact transform) from the first product, in order of
    newest processing baseline then item id, whose pixel there is valid; an acquisition counts
    once. ``datatakes`` restricts the count to those datatake indices.
    """
    valid = np.zeros(shape, np.uint16)
    cloudy = np.zeros(shape, np.uint16)
    for _index, filled, scl, _cloud in _grid_observations(spec, crs_epsg, transform, shape, invalid_classes, datatakes):
        valid += filled
        cloudy += filled & np.isin(scl, cloud_classes)
    return valid, cloudy


def observation_sums(
    spec: SampleSpec, crs_epsg: int, transform, shape: tuple[int, int],
    nodata_classes: tuple[int, ...] = (SCL_NODATA,), datatakes: Iterable[int] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The generator's own "mean cloud probability" sums on a grid, from its in-memory scenes.

    Returns ``valid`` (uint16, observations), ``cloud_sum`` (float64, Σ cloud/100) and
    ``cloud_sq_sum`` (float64, Σ (cloud/100)²) per grid pixel, so the mean cloud probability
    is 100 · cloud_sum / valid. Per acquisition (datatake), a grid pixel takes the product
    pixel that contains its centre from the first product, in order of newest processing
    baseline then item id, whose SCL there is not in ``nodata_classes``; the ``cloud`` value of
    that same product pixel is the observation. Nothing is read from disk: any ``spec`` (for
    instance ``SampleSpec.small(seed=7)``, an independent year) works without generating it.
    """
    valid = np.zeros(shape, np.uint16)
    cloud_sum = np.zeros(shape, np.float64)
    cloud_sq_sum = np.zeros(shape, np.float64)
    for _index, filled, _scl, cloud in _grid_observations(spec, crs_epsg, transform, shape, nodata_classes, datatakes):
        valid += filled
        value = np.where(filled, cloud / 100.0, 0.0)
        cloud_sum += value
        cloud_sq_sum += value * value
    return valid, cloud_sum, cloud_sq_sum


def _grid_observations(spec: SampleSpec, crs_epsg: int, transform, shape: tuple[int, int],
                       invalid_classes: Iterable[int], datatakes: Iterable[int] | None):
    """Per datatake: (index, filled, SCL, cloud) on the grid, by the rule of :func:`observation_counts`.

    Renders only the product pixels the grid's pixel centres fall in (pointwise, the values
    the COGs hold there), each once.
    """
    from pyproj import Transformer

    layout = make_layout(spec)
    invalid = np.asarray(tuple(invalid_classes), dtype=np.uint8)
    wanted = None if datatakes is None else set(datatakes)
    rows, cols = shape
    cc, rr = np.meshgrid(np.arange(cols) + 0.5, np.arange(rows) + 0.5)
    gx = transform.c + cc * transform.a + rr * transform.b
    gy = transform.f + cc * transform.d + rr * transform.e
    coords = {}
    for epsg in {t.epsg for t in layout.tiles}:
        coords[epsg] = Transformer.from_crs(crs_epsg, epsg, always_xy=True).transform(gx, gy)
    # the tile pixel under each grid pixel centre, computed once per tile
    under: dict[tuple, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for tile in layout.tiles:
        x, y = coords[tile.epsg]
        col = np.floor((x - tile.x0) / RES).astype(np.int64)
        row = np.floor((tile.y0 - y) / RES).astype(np.int64)
        inside = (col >= 0) & (col < tile.size_px) & (row >= 0) & (row < tile.size_px)
        under[(tile.epsg, tile.x0, tile.y0)] = (inside, row, col)
    by_datatake: dict[int, list[Product]] = {}
    for product in _products(layout):
        by_datatake.setdefault(product.datatake.index, []).append(product)
    for index, products in sorted(by_datatake.items()):
        if wanted is not None and index not in wanted:
            continue
        fields_ = DatatakeFields(layout, layout.datatakes[index])
        products = sorted(products, key=lambda p: (-float(p.baseline), p.item_id))
        scl = np.zeros(shape, np.uint8)
        cloud = np.zeros(shape, np.uint8)
        filled = np.zeros(shape, bool)
        for product in products:
            tile = product.tile
            inside, row, col = under[(tile.epsg, tile.x0, tile.y0)]
            idx = np.flatnonzero(inside & ~filled)
            if not idx.size:
                continue
            key = row.flat[idx] * tile.size_px + col.flat[idx]
            pixels, back = np.unique(key, return_inverse=True)
            s, c = render_pixels(layout, fields_, product, pixels // tile.size_px, pixels % tile.size_px)
            s, c = s[back], c[back]
            ok = ~np.isin(s, invalid)
            take = idx[ok]
            scl.flat[take] = s[ok]
            cloud.flat[take] = c[ok]
            filled.flat[take] = True
        yield index, filled, scl, cloud


def aoi_lonlat(archive: str | Path) -> tuple[float, float, float, float]:
    """The archive's area as (west, south, east, north) degrees."""
    info = json.loads((Path(archive) / "archive.json").read_text())
    xmin, ymin, xmax, ymax = info["aoi_27700"]
    tr = _transformer(27700, 4326)
    return tr.transform_bounds(xmin, ymin, xmax, ymax)


def main(argv: Iterable[str] | None = None) -> None:
    """``python -m cloud_probability.sampledata.sample_archive OUT [--full] [--max-datatakes N]``."""
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
