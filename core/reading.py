"""Reading only the part of a COG that an area needs, over HTTP (GDAL ``/vsicurl/``).

A 5 km area of a 110 km Sentinel-2 tile is a few internal tiles of its SCL COG: reading that
window costs a few hundred kilobytes instead of the whole file. GDAL is told not to list
directories, to merge neighbouring ranges and to cache what it fetched; coarser resolutions
read the COG's overviews.
"""
from __future__ import annotations

import json
import math
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np

# GDAL settings for reading COGs over HTTP: what rio-tiler/TiTiler and the GDAL docs use.
GDAL_HTTP_OPTIONS = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",  # no directory listing per file
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.TIF,.tiff,.jp2",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",  # one request for neighbouring blocks
    "GDAL_HTTP_MULTIPLEX": "YES",
    "GDAL_INGESTED_BYTES_AT_OPEN": "32768",  # header and tile index in the first request
    "VSI_CACHE": "TRUE",
    "VSI_CACHE_SIZE": str(16 * 1024 * 1024),
    "CPL_VSIL_CURL_CACHE_SIZE": str(64 * 1024 * 1024),
    "GDAL_HTTP_MAX_RETRY": "3",
    "GDAL_HTTP_RETRY_DELAY": "0.5",
    "GDAL_HTTP_TIMEOUT": "60",
    "CPL_VSIL_NETWORK_STATS_ENABLED": "YES",
}


class ReadError(Exception):
    """A raster (window) could not be read; the message names the file and the cause."""


def _read_errors() -> tuple[type[BaseException], ...]:
    """What rasterio raises for unreadable files: in rasterio 1.3 RasterioIOError is an
    OSError and not a RasterioError, and GDAL's own errors (CPLE_*) can surface too."""
    import rasterio.errors

    errors: list[type[BaseException]] = [rasterio.errors.RasterioError, rasterio.errors.RasterioIOError, OSError]
    try:
        from rasterio._err import CPLE_BaseError

        errors.append(CPLE_BaseError)
    except ImportError:  # a rasterio that moved it
        pass
    return tuple(errors)


def vsi_path(href: str) -> str:
    """GDAL path for an asset href (http(s) → /vsicurl/, s3:// → /vsis3/, local paths as they are)."""
    if href.startswith(("http://", "https://")):
        return "/vsicurl/" + href
    if href.startswith("s3://"):
        return "/vsis3/" + href[5:]
    if href.startswith("file://"):
        return href[7:]
    return href


@contextmanager
def gdal_http_env(**extra: str) -> Iterator[None]:
    """rasterio.Env with the HTTP read settings (thread-local in GDAL: enter it in each worker)."""
    import rasterio

    with rasterio.Env(**{**GDAL_HTTP_OPTIONS, **extra}):
        yield


def network_bytes_reset() -> None:
    """Start counting bytes GDAL fetches over the network (process wide)."""
    from osgeo import gdal

    gdal.SetConfigOption("CPL_VSIL_NETWORK_STATS_ENABLED", "YES")
    gdal.NetworkStatsReset()


def clear_http_cache() -> None:
    """Forget what GDAL cached of remote files (its /vsicurl/ cache is process wide)."""
    from osgeo import gdal

    gdal.VSICurlClearCache()


def network_bytes() -> int:
    """Bytes GDAL downloaded through /vsicurl/ and friends since :func:`network_bytes_reset`."""
    from osgeo import gdal

    text = gdal.NetworkStatsGetAsSerializedJSON()
    if not text:
        return 0
    stats = json.loads(text)
    return int(stats.get("methods", {}).get("GET", {}).get("downloaded_bytes", 0))


@dataclass
class Window:
    """Pixels of one raster around an area, with their georeferencing."""

    data: np.ndarray  # (rows, cols), or (bands, rows, cols) for several bands
    transform: object  # affine.Affine of the window
    crs: object  # rasterio CRS
    nodata: float | None
    full_resolution: float  # metres of the raster's own pixels


_AREA_CACHE: dict = {}
_AREA_LOCK = threading.Lock()


def area_in_crs(geometry, geometry_epsg: int, crs) -> object:
    """A shapely geometry given in EPSG ``geometry_epsg`` transformed to ``crs`` (densified).

    Memoised: an area is transformed once per CRS however many scenes are read (building a
    pyproj transformer costs more than reading a small window).
    """
    from pyproj import CRS, Transformer
    from shapely.ops import transform

    dst = CRS.from_user_input(crs)
    key = (geometry.wkb, int(geometry_epsg), dst.to_wkt())
    with _AREA_LOCK:
        hit = _AREA_CACHE.get(key)
    if hit is not None:
        return hit
    src = CRS.from_epsg(geometry_epsg)
    if src == dst:
        result = geometry
    else:
        tr = Transformer.from_crs(src, dst, always_xy=True)
        result = transform(tr.transform, _densify(geometry))
    with _AREA_LOCK:
        if len(_AREA_CACHE) > 256:
            _AREA_CACHE.clear()
        _AREA_CACHE[key] = result
    return result


def _densify(geometry, parts: int = 16):
    """Add vertices so straight edges stay straight enough after reprojection."""
    from shapely.geometry import MultiPolygon, Polygon

    def ring(coords):
        coords = list(coords)
        out = []
        for (x0, y0), (x1, y1) in zip(coords[:-1], coords[1:]):
            for i in range(parts):
                out.append((x0 + (x1 - x0) * i / parts, y0 + (y1 - y0) * i / parts))
        out.append(coords[-1])
        return out

    if isinstance(geometry, Polygon):
        return Polygon(ring(geometry.exterior.coords), [ring(r.coords) for r in geometry.interiors])
    if isinstance(geometry, MultiPolygon):
        return MultiPolygon([_densify(g, parts) for g in geometry.geoms])
    return geometry


def read_window(
    href: str,
    area,
    area_epsg: int,
    resolution: float | None = None,
    halo_m: float = 0.0,
    bands: list[int] | None = None,
) -> Window | None:
    """Read the window of ``href`` that covers ``area`` (shapely geometry in ``area_epsg``).

    ``resolution`` (metres) coarser than the raster's reads its overviews (nearest); ``halo_m``
    widens the window (e.g. for dilating a mask near the area's edge). Returns None when the
    area does not touch the raster. Raises :class:`ReadError` when the file cannot be read.
    Call inside :func:`gdal_http_env` for remote files.
    """
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.windows import Window as RWindow
    from rasterio.windows import from_bounds

    path = vsi_path(href)
    try:
        with rasterio.open(path) as ds:
            native = abs(ds.transform.a)
            local = area_in_crs(area, area_epsg, ds.crs)
            xmin, ymin, xmax, ymax = local.bounds
            xmin, ymin, xmax, ymax = xmin - halo_m, ymin - halo_m, xmax + halo_m, ymax + halo_m
            window = from_bounds(xmin, ymin, xmax, ymax, ds.transform)
            # whole pixels, clipped to the raster
            col0 = max(0, math.floor(window.col_off))
            row0 = max(0, math.floor(window.row_off))
            col1 = min(ds.width, math.ceil(window.col_off + window.width))
            row1 = min(ds.height, math.ceil(window.row_off + window.height))
            if col1 <= col0 or row1 <= row0:
                return None
            win = RWindow(col0, row0, col1 - col0, row1 - row0)
            factor = 1
            if resolution and resolution > native * 1.0001:
                factor = max(1, int(round(resolution / native)))
            out_rows = max(1, int(math.ceil(win.height / factor)))
            out_cols = max(1, int(math.ceil(win.width / factor)))
            indexes = bands or 1
            if factor > 1:
                # snap the window to whole coarse pixels so the output grid is regular
                win = RWindow(col0, row0, out_cols * factor, out_rows * factor)
                data = ds.read(indexes, window=win, out_shape=(out_rows, out_cols) if bands is None else
                               (len(bands), out_rows, out_cols), resampling=Resampling.nearest, boundless=True,
                               fill_value=ds.nodata if ds.nodata is not None else 0)
            else:
                data = ds.read(indexes, window=win)
            transform = ds.window_transform(win) * rasterio.Affine.scale(factor)
            return Window(data, transform, ds.crs, ds.nodata, native)
    except _read_errors() as exc:
        raise ReadError(f"{href}: {exc}") from exc


_RASTERIZE_LOCK = threading.Lock()


def area_mask(area, area_epsg: int, window: Window) -> np.ndarray:
    """True for the window's pixels whose centre lies inside ``area``.

    GDAL's rule, as in QGIS, gdal_rasterize and cutlines (centres on the boundary follow its
    half-open scanline convention). Serialised: rasterio rasterizes through a GDAL MEM dataset
    that misbehaves (spurious georeferencing warnings) when several threads do it at once;
    it takes about a millisecond.
    """
    from rasterio import features

    local = area_in_crs(area, area_epsg, window.crs)
    with _RASTERIZE_LOCK:
        return features.geometry_mask([local], out_shape=window.data.shape[-2:], transform=window.transform, invert=True)


@dataclass(frozen=True)
class Grid:
    """A raster grid: CRS, affine transform and (rows, cols)."""

    crs: object
    transform: object
    shape: tuple[int, int]

    @property
    def resolution(self) -> float:
        return abs(self.transform.a)


def grid_of(window: Window) -> Grid:
    return Grid(window.crs, window.transform, tuple(window.data.shape[-2:]))


class GridLookup:
    """Where each pixel centre of a grid lies in other CRSs, computed once per CRS.

    Nearest-neighbour resampling is then exact and cheap: a source pixel is the one that
    contains the output pixel's centre (``floor`` of the exact PROJ transform), and every
    product in the same UTM zone reuses the same transformed coordinates.
    """

    def __init__(self, grid: Grid):
        self.grid = grid
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._lock = threading.Lock()

    def coords(self, crs) -> tuple[np.ndarray, np.ndarray]:
        """x, y (float64, grid shape) of the pixel centres in ``crs``."""
        from pyproj import CRS, Transformer

        dst = CRS.from_user_input(crs)
        key = dst.to_wkt()
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None:
            return hit
        rows, cols = self.grid.shape
        t = self.grid.transform
        cc, rr = np.meshgrid(np.arange(cols) + 0.5, np.arange(rows) + 0.5)
        x = t.c + cc * t.a + rr * t.b
        y = t.f + cc * t.d + rr * t.e
        src = CRS.from_user_input(self.grid.crs)
        if src != dst:
            x, y = Transformer.from_crs(src, dst, always_xy=True).transform(x, y)
        with self._lock:
            self._cache[key] = (x, y)
        return x, y


def read_on_grid(href: str, grid: Grid, band: int = 1, resampling: str = "nearest",
                 lookup: GridLookup | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Band ``band`` of ``href`` on ``grid``; only the blocks under the grid are read.

    Nearest: the source pixel containing each output pixel's centre, with exact coordinates
    (pass a shared ``lookup`` to transform the grid once for many rasters). Other resampling
    goes through GDAL's warper. Returns ``(values, valid)``: ``valid`` is False outside the
    raster and where it has no data. Raises :class:`ReadError`.
    """
    import rasterio
    from rasterio.windows import Window as RWindow

    try:
        with rasterio.open(vsi_path(href)) as ds:
            if resampling != "nearest":
                return _warp_on_grid(ds, grid, band, resampling)
            lookup = lookup or GridLookup(grid)
            x, y = lookup.coords(ds.crs)
            inv = ~ds.transform
            col = np.floor(inv.a * x + inv.b * y + inv.c).astype(np.int64)
            row = np.floor(inv.d * x + inv.e * y + inv.f).astype(np.int64)
            inside = (col >= 0) & (col < ds.width) & (row >= 0) & (row < ds.height)
            dtype = np.dtype(ds.dtypes[band - 1])
            values = np.zeros(grid.shape, dtype=dtype)
            if not inside.any():
                return values, inside
            r0, r1 = int(row[inside].min()), int(row[inside].max()) + 1
            c0, c1 = int(col[inside].min()), int(col[inside].max()) + 1
            data = ds.read(band, window=RWindow(c0, r0, c1 - c0, r1 - r0))
            ok = ds.read_masks(band, window=RWindow(c0, r0, c1 - c0, r1 - r0)) > 0
            values[inside] = data[row[inside] - r0, col[inside] - c0]
            valid = inside.copy()
            valid[inside] = ok[row[inside] - r0, col[inside] - c0]
            return values, valid
    except _read_errors() as exc:
        raise ReadError(f"{href}: {exc}") from exc


def _warp_on_grid(ds, grid: Grid, band: int, resampling: str) -> tuple[np.ndarray, np.ndarray]:
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    with WarpedVRT(ds, crs=grid.crs, transform=grid.transform, width=grid.shape[1], height=grid.shape[0],
                   resampling=Resampling[resampling]) as vrt:
        return vrt.read(band), vrt.read_masks(band) > 0


def write_raster(path: str, data: np.ndarray, grid: Grid, nodata: float | None, tags: dict | None = None) -> None:
    """Write ``data`` on ``grid`` as a tiled, DEFLATE-compressed GeoTIFF with overviews.

    Written to a temporary file beside ``path`` and renamed at the end: a failed or cancelled
    run never leaves a half-written raster behind.
    """
    import os

    import rasterio
    from rasterio.enums import Resampling

    bands = data[np.newaxis] if data.ndim == 2 else data
    tmp = f"{path}.part-{os.getpid()}-{threading.get_ident()}.tif"
    profile = dict(
        driver="GTiff", width=bands.shape[2], height=bands.shape[1], count=bands.shape[0], dtype=bands.dtype.name,
        crs=grid.crs, transform=grid.transform, nodata=nodata, tiled=True, blockxsize=256, blockysize=256,
        compress="DEFLATE", predictor=2 if bands.dtype.kind in "iu" else 3, BIGTIFF="IF_SAFER",
    )
    if bands.shape[1] < 256 or bands.shape[2] < 256:
        profile.update(tiled=False)
        profile.pop("blockxsize")
        profile.pop("blockysize")
    try:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(bands)
            if tags:
                dst.update_tags(**{k: str(v) for k, v in tags.items()})
            factors = [f for f in (2, 4, 8, 16, 32) if min(bands.shape[1:]) // f >= 64]
            if factors:
                categorical = bands.dtype.kind in "iu"
                dst.build_overviews(factors, Resampling.nearest if categorical else Resampling.average)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
