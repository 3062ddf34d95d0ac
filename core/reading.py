"""Reading only the part of a COG that an area needs, over HTTP.

A 5 km area of a 110 km Sentinel-2 tile is a few internal tiles of its SCL COG: reading that
window costs a few hundred kilobytes instead of the whole file. :func:`open_source` reads plain
HTTP(S) COGs with :mod:`core.cog` (two round trips) and everything else with GDAL
(``/vsicurl/``, told not to list directories, to merge neighbouring ranges and to cache what it
fetched); with ``overviews`` a coarser grid reads the COG's overviews.

Assets are read only from the catalogue's own kind of place (:func:`check_href`): a scene's
hrefs, taken with :func:`asset_href`, remember the catalogue its item came from, and every
read checks them against it. Whatever a file or a server does wrong ends as a
:class:`ReadError` naming the file: that product is unreadable, the others are unaffected.
"""
from __future__ import annotations

import json
import math
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .catalogue import LOCAL, Catalogue, Href, catalogue_of  # noqa: F401 (read from here by callers)
from .planetary import signing_for
from .rasters import write_raster  # noqa: F401 (the one writer; read from here by callers)

# GDAL settings for reading COGs over HTTP, as GDAL's documentation advises for cloud-optimised
# GeoTIFFs (benchmarks/bench_reader.py measured the variants). The HEAD request stays: with
# CPL_VSIL_CURL_USE_HEAD=NO, GDAL 3.6 opens with a GET without Range and the server starts
# sending the whole file (135 MB instead of 6.7 MB in that benchmark).
GDAL_HTTP_OPTIONS: dict = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",  # no directory listing per file
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.TIF,.tiff,.jp2",
    "GDAL_INGESTED_BYTES_AT_OPEN": "16384",  # the header and tile index in the first GET
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",  # one request for neighbouring blocks
    "GDAL_HTTP_MULTIPLEX": "YES",
    "GDAL_HTTP_VERSION": "2TLS",  # HTTP/2 over TLS where libcurl has it (Debian's has)
    "GDAL_HTTP_MULTIRANGE": "YES",  # a window's ranges at once (streams of one HTTP/2 connection): 1.63 s vs SINGLE_GET's 2.00 s
    "CPL_VSIL_CURL_CACHE_SIZE": str(64 * 1024 * 1024),
    "GDAL_HTTP_MAX_RETRY": "3",
    "GDAL_HTTP_RETRY_DELAY": "0.5",
    "GDAL_HTTP_CONNECTTIMEOUT": "10",
    # GDAL_HTTP_TIMEOUT (curl's whole-transfer timeout) follows core.http's deadline: gdal_http_env
    "CPL_VSIL_NETWORK_STATS_ENABLED": "YES",
    "GDAL_CACHEMAX": 256 * 1024 * 1024,  # bytes of decoded blocks; GDAL's default (5 % of RAM) is 1.2 GB here
}

LOCAL_ASSETS_ENV = "CLOUDPROB_ALLOW_LOCAL_ASSETS"


class ReadError(Exception):
    """A raster (window) could not be read; the message names the file and the cause."""


class RefusedAsset(ReadError):
    """An href the scene's catalogue may not point to (see :func:`check_href`)."""


# ---------------------------------------------------------------------------------------------
# Where assets may be read from

def asset_href(scene, name: str) -> Href | None:
    """``scene.asset_href(name)``, remembering the scene's catalogue: the read functions of this
    module then refuse what that catalogue may not point to, with a :class:`RefusedAsset`, and
    sign what it signs. (:meth:`core.stac.Scene.asset_href` gives such an :class:`Href` itself.)"""
    href = scene.asset_href(name)
    if href is None or isinstance(href, Href):
        return href
    return Href(href, catalogue_of(scene))


def local_assets_allowed() -> bool:
    """Whether the user allows any catalogue to point to this computer's files and networks
    (``CLOUDPROB_ALLOW_LOCAL_ASSETS=YES``)."""
    import os

    return os.environ.get(LOCAL_ASSETS_ENV, "").strip().upper() in ("YES", "TRUE", "ON", "1")


_REMOTE_SCHEMES = {"http", "https", "s3", "gs", "az"}


def check_href(href: str, catalogue: Catalogue | None = None) -> tuple[str, object]:
    """``(href, places)`` if ``catalogue`` may point to ``href``; ``places`` (core.http.Places)
    are where its requests may go. Raises :class:`RefusedAsset` naming the href, what it is and
    the catalogue; nothing is opened or requested before.

    The rule: assets are read from the catalogue's own kind of place. A catalogue on this
    computer (no web address) may point anywhere. A web catalogue's items may point to
    ``http(s)://``, ``s3://``, ``gs://`` and ``az://`` (through GDAL), never to link-local
    or cloud metadata addresses; to this machine (loopback) only when the catalogue is itself
    on it, to private networks only when it is itself on one or on this machine; to local
    files never. ``CLOUDPROB_ALLOW_LOCAL_ASSETS=YES`` lifts the local-file, loopback and
    private-network rules (never the link-local and metadata one). ``catalogue`` None: the
    href's own (an :class:`Href`) or :data:`LOCAL`. The places carry the catalogue's signer
    (Planetary Computer's SAS tokens), which core.http applies to each request.
    """
    import dataclasses

    catalogue = catalogue or getattr(href, "catalogue", None) or LOCAL
    places = _places(catalogue)
    signer = catalogue_signer(catalogue)
    if signer is not None:
        places = dataclasses.replace(places, signer=signer)
    return _check_href(href, catalogue, places)


def catalogue_kind(catalogue: Catalogue) -> str:
    """``local`` (no URL, or a file), ``loopback``, ``private`` or ``public``: by the catalogue's
    address, its host name resolved once."""
    if not catalogue.url or not catalogue.url.lower().startswith(("http://", "https://")):
        return "local"
    return _host_kind(_hostname(catalogue.url))


def catalogue_signer(catalogue: Catalogue):
    """The :class:`core.planetary.Signing` of the catalogue's assets, or None: its own, or when
    ``"auto"`` what :func:`core.planetary.signing_for` decides now (on a Dask worker as here)."""
    if isinstance(catalogue.signing, str):
        return signing_for(catalogue.url)
    return catalogue.signing


def _places(catalogue: Catalogue):
    from . import http

    kind = catalogue_kind(catalogue)
    if kind == "local":
        return http.ANYWHERE
    allowed = local_assets_allowed()
    return http.Places(loopback=allowed or kind == "loopback", private=allowed or kind in ("loopback", "private"),
                       source=catalogue.describe())


def _check_href(href: str, catalogue: Catalogue, places) -> tuple[str, object]:
    text = str(href).strip()
    match = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):", text)
    scheme = match.group(1).lower() if match and (text[match.end():].startswith("//") or
                                                   match.group(1).lower() == "file") else ""
    if len(scheme) == 1:  # a Windows drive letter (C:/…), a local path
        scheme = ""
    kind = catalogue_kind(catalogue)
    allowed = local_assets_allowed()
    if scheme in ("http", "https"):
        host = _hostname(text)
        if not host:
            raise RefusedAsset(f"{text}: refused: no host name")
        try:
            literal = str(ipaddress_of(host))
        except ValueError:
            literal = None
        if literal is not None:  # an address written out: refused before any connection
            reason = places.refusal(host, literal)
            if reason:
                raise RefusedAsset(f"{text}: refused: {reason}" + _allow_hint(reason))
        elif host.lower() in ("localhost", "localhost.localdomain") or host.lower().endswith(".localhost"):
            reason = places.refusal(host, "127.0.0.1")
            if reason:
                raise RefusedAsset(f"{text}: refused: {reason}" + _allow_hint(reason))
        return text, places
    if kind == "local" or (allowed and scheme in ("", "file")):
        return text, places
    if scheme in _REMOTE_SCHEMES:
        return text, places
    if scheme in ("", "file"):
        raise RefusedAsset(
            f"{text}: refused: a file on this computer, which {catalogue.describe()} may not point to "
            f"(set {LOCAL_ASSETS_ENV}=YES to allow it)")
    raise RefusedAsset(f"{text}: refused: a {scheme}:// address, which {catalogue.describe()} may not point to "
                       "(http, https, s3, gs and az only)")


def _allow_hint(reason: str) -> str:
    if "never read" in reason:
        return ""
    return f" (set {LOCAL_ASSETS_ENV}=YES to allow it)"


def ipaddress_of(host: str):
    import ipaddress

    return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])


def _hostname(url: str) -> str:
    from urllib.parse import urlsplit

    try:
        return urlsplit(url).hostname or ""
    except ValueError:
        return ""


_HOST_KINDS: dict[str, str] = {}


def _host_kind(host: str) -> str:
    """``loopback``, ``private`` or ``public``: a catalogue host's addresses (resolved once)."""
    from . import http

    hit = _HOST_KINDS.get(host)
    if hit is not None:
        return hit
    import socket

    kinds = set()
    try:
        kinds.add(http.address_kind(str(ipaddress_of(host))))
    except ValueError:
        if host.lower() == "localhost" or host.lower().endswith(".localhost"):
            kinds.add("loopback")
        else:
            try:
                kinds = {http.address_kind(i[4][0]) for i in socket.getaddrinfo(host, 443, proto=socket.IPPROTO_TCP)}
            except (OSError, UnicodeError):
                kinds = {"public"}
    # the least trusted of its addresses decides
    kind = "public" if kinds - {"loopback", "private"} else "private" if "private" in kinds else "loopback"
    if len(_HOST_KINDS) > 256:
        _HOST_KINDS.clear()
    _HOST_KINDS[host] = kind
    return kind


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
    """GDAL path for an asset href (http(s) → /vsicurl/, s3:// → /vsis3/, gs:// → /vsigs/,
    az:// → /vsiaz/, local paths as they are)."""
    href = str(href)
    if href.startswith(("http://", "https://")):
        return "/vsicurl/" + href
    for scheme, prefix in (("s3://", "/vsis3/"), ("gs://", "/vsigs/"), ("az://", "/vsiaz/")):
        if href.startswith(scheme):
            return prefix + href[len(scheme):]
    if href.startswith("file://"):
        return href[7:]
    return href


@contextmanager
def gdal_http_env(**extra: str) -> Iterator[None]:
    """rasterio.Env with the HTTP read settings (thread-local in GDAL: enter it in each worker)."""
    import rasterio

    from . import http

    with rasterio.Env(**{**GDAL_HTTP_OPTIONS, "GDAL_HTTP_TIMEOUT": str(int(math.ceil(http.timeout_s()))), **extra}):
        yield


def network_bytes_reset() -> None:
    """Start counting bytes fetched over the network (GDAL's and :mod:`core.cog`'s; process wide)."""
    from osgeo import gdal

    from . import cog

    gdal.SetConfigOption("CPL_VSIL_NETWORK_STATS_ENABLED", "YES")
    gdal.NetworkStatsReset()
    cog.reset_counters()


def clear_http_cache() -> None:
    """Forget what was cached of remote files: GDAL's /vsicurl/ cache and the COG headers kept
    by :mod:`core.cog` (both process wide)."""
    from osgeo import gdal

    from . import cog

    gdal.VSICurlClearCache()
    cog.clear_cache()


def network_bytes() -> int:
    """Bytes downloaded since :func:`network_bytes_reset`: by GDAL (/vsicurl/ and friends) and
    by :mod:`core.cog`."""
    from osgeo import gdal

    from . import cog

    text = gdal.NetworkStatsGetAsSerializedJSON()
    stats = json.loads(text) if text else {}
    return int(stats.get("methods", {}).get("GET", {}).get("downloaded_bytes", 0)) + cog.bytes_fetched()


_AREA_CACHE: dict = {}
_AREA_LOCK = threading.Lock()
_AREA_COMPUTING: dict = {}


def area_in_crs(geometry, geometry_epsg: int, crs) -> object:
    """A shapely geometry given in EPSG ``geometry_epsg`` transformed to ``crs`` (densified).

    Memoised: an area is transformed once per CRS however many scenes are read (building a
    pyproj transformer costs more than reading a small window).
    """
    from pyproj import CRS, Transformer

    from .compat import transform_xy

    key = (_geometry_key(geometry), int(geometry_epsg), _crs_key(crs))
    with _AREA_LOCK:
        hit = _AREA_CACHE.get(key)
        if hit is not None:
            return hit
        computing = _AREA_COMPUTING.setdefault(key, threading.Lock())
    with computing:  # one thread transforms; the others starting at the same moment wait for it
        with _AREA_LOCK:
            hit = _AREA_CACHE.get(key)
        if hit is not None:
            return hit
        src, dst = CRS.from_epsg(geometry_epsg), pyproj_crs(crs)
        if src == dst:
            result = geometry
        elif int(geometry_epsg) != 4326 and _is_wgs84_utm(crs):
            # through the area's longitudes/latitudes, which screening computes anyway: PROJ
            # picks the same datum shift either way, and a UTM projection of WGS 84 costs
            # ~2 ms to set up where a datum-shifting transformer costs 12–20 ms
            lonlat = area_in_crs(geometry, geometry_epsg, 4326)
            result = transform_xy(Transformer.from_crs(_WGS84, dst, always_xy=True).transform, lonlat)
        else:
            tr = Transformer.from_crs(src, dst, always_xy=True)
            result = transform_xy(tr.transform, _densify(geometry))
        with _AREA_LOCK:
            if len(_AREA_CACHE) > 256:
                _AREA_CACHE.clear()
            _AREA_CACHE[key] = result
            _AREA_COMPUTING.pop(key, None)
        return result


_WGS84 = "EPSG:4326"
_UTM = re.compile(r"EPSG:32[67](0[1-9]|[1-5][0-9]|60)")


def _is_wgs84_utm(crs) -> bool:
    """Whether ``crs`` is a WGS 84 / UTM zone (every Sentinel-2 product's CRS)."""
    return bool(_UTM.fullmatch(_crs_key(crs)))


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


def window_grid(href: str, area, area_epsg: int, resolution: float | None = None, halo_m: float = 0.0,
                clip: bool = True) -> Grid | None:
    """The grid of ``href``'s own pixels (or of whole multiples of them for a coarser
    ``resolution``) around ``area``, from the header only; None when the area misses it.
    ``clip`` as for :func:`grid_around`."""
    with open_source(href) as src:
        return grid_around(src.crs, src.transform, src.width, src.height, area, area_epsg, resolution, halo_m, clip)


def grid_around(crs, transform, width: int, height: int, area, area_epsg: int, resolution: float | None = None,
                halo_m: float = 0.0, clip: bool = True) -> Grid | None:
    """The part of a raster grid (``crs``, ``transform``, size) around ``area``, in whole pixels
    (or whole multiples of them for a coarser ``resolution``); None when the area misses it.
    ``clip`` False: the whole area on the raster's lattice, beyond the raster's edges too (for
    an acquisition whose other products cover the rest)."""
    from rasterio.transform import Affine

    from .compat import apply, compose

    native = abs(transform.a)
    xmin, ymin, xmax, ymax = _geometry_facts(area_in_crs(area, area_epsg, crs))[1]
    xmin, ymin, xmax, ymax = xmin - halo_m, ymin - halo_m, xmax + halo_m, ymax + halo_m
    # the corners' fractional pixels, as rasterio.windows.from_bounds computes them (without
    # entering a GDAL environment for plain affine arithmetic: it cost as much as the rest)
    inverse = ~transform
    cols, rows = zip(*(apply(inverse, *corner) for corner in ((xmin, ymax), (xmax, ymax), (xmax, ymin), (xmin, ymin))))
    col0, row0 = math.floor(min(cols)), math.floor(min(rows))
    col1, row1 = math.ceil(max(cols)), math.ceil(max(rows))
    if min(width, col1) <= max(0, col0) or min(height, row1) <= max(0, row0):
        return None  # the area misses the raster
    if clip:
        col0, row0, col1, row1 = max(0, col0), max(0, row0), min(width, col1), min(height, row1)
    factor = max(1, int(round(resolution / native))) if resolution and resolution > native * 1.0001 else 1
    rows = int(math.ceil((row1 - row0) / factor))
    cols = int(math.ceil((col1 - col0) / factor))
    return Grid(crs, compose(transform, Affine.translation(col0, row0), Affine.scale(factor)), (rows, cols))


_RASTERIZE_LOCK = threading.Lock()
_AREA_MASKS: dict = {}


def area_mask(area, area_epsg: int, grid: "Grid") -> np.ndarray:
    """True for the grid's pixels whose centre lies inside ``area``.

    GDAL's rule, as in QGIS, gdal_rasterize and cutlines (centres on the boundary follow its
    half-open scanline convention). Serialised: rasterio rasterizes through a GDAL MEM dataset
    that misbehaves (spurious georeferencing warnings) when several threads do it at once;
    it takes about a millisecond.
    """
    from rasterio import features

    local = area_in_crs(area, area_epsg, grid.crs)
    key = (_geometry_key(local), _crs_key(grid.crs), tuple(grid.transform)[:6], tuple(grid.shape))
    with _RASTERIZE_LOCK:  # acquisitions of one MGRS tile share their grid: rasterized once
        hit = _AREA_MASKS.get(key)
        if hit is None:
            if len(_AREA_MASKS) > 16:
                _AREA_MASKS.clear()
            hit = _AREA_MASKS[key] = features.geometry_mask(
                [local], out_shape=grid.shape, transform=grid.transform, invert=True)
            hit.flags.writeable = False  # shared by the callers: read-only
        return hit


@dataclass(frozen=True)
class Grid:
    """A raster grid: CRS, affine transform and (rows, cols)."""

    crs: object
    transform: object
    shape: tuple[int, int]

    @property
    def resolution(self) -> float:
        return abs(self.transform.a)


_CRS_CACHE: dict[str, object] = {}


def _crs_key(crs) -> str:
    """A cheap, exact key for a CRS (rasterio CRS, pyproj CRS, EPSG code or text): its
    authority code or definition as written, never WKT computed anew (pyproj builds a copy of a
    CRS for each thread that asks it anything, ~0.7 ms per CRS and thread)."""
    if isinstance(crs, str):
        return crs
    if isinstance(crs, int):
        return f"EPSG:{crs}"
    return crs.to_string() if hasattr(crs, "to_string") else str(crs)


_GEOMETRY_KEYS: dict = {}
_GEOMETRY_KEYS_LOCK = threading.Lock()


def _geometry_facts(geometry) -> tuple[bytes, tuple]:
    """(WKB, bounds) of a shapely geometry, computed once per geometry object: shapely sets up
    GEOS for each thread that touches a geometry (~0.3 ms), and screening threads only need these."""
    with _GEOMETRY_KEYS_LOCK:
        hit = _GEOMETRY_KEYS.get(id(geometry))
        if hit is not None and hit[0] is geometry:
            return hit[1]
    facts = (geometry.wkb, tuple(geometry.bounds))
    with _GEOMETRY_KEYS_LOCK:
        if len(_GEOMETRY_KEYS) > 256:
            _GEOMETRY_KEYS.clear()
        _GEOMETRY_KEYS[id(geometry)] = (geometry, facts)  # the geometry is kept: its id stays its own
    return facts


def _geometry_key(geometry) -> bytes:
    return _geometry_facts(geometry)[0]


def pyproj_crs(crs):
    """pyproj CRS of a rasterio CRS, EPSG code or WKT, memoised (building one costs ~0.5 ms)."""
    from pyproj import CRS

    key = crs if isinstance(crs, str) else (crs.to_string() if hasattr(crs, "to_string") else str(crs))
    hit = _CRS_CACHE.get(key)
    if hit is None:
        hit = CRS.from_user_input(crs)
        if len(_CRS_CACHE) > 64:
            _CRS_CACHE.clear()
        _CRS_CACHE[key] = hit
    return hit


_LOOKUPS: dict = {}
_LOOKUPS_LOCK = threading.Lock()


def clear_lookups() -> None:
    """Forget the memoised grid lookups, transformed areas and area masks (a benchmark's cold start)."""
    with _LOOKUPS_LOCK:
        _LOOKUPS.clear()
    with _AREA_LOCK:
        _AREA_CACHE.clear()
    with _RASTERIZE_LOCK:
        _AREA_MASKS.clear()


def lookup_for(grid: Grid) -> "GridLookup":
    """A shared :class:`GridLookup` for ``grid``: acquisitions read onto the same grid (an area's
    window of the same tile) transform its pixel centres once."""
    key = (_crs_key(grid.crs), tuple(grid.transform)[:6], tuple(grid.shape))
    with _LOOKUPS_LOCK:
        hit = _LOOKUPS.get(key)
        if hit is None:
            if len(_LOOKUPS) > 16:
                _LOOKUPS.clear()
            hit = _LOOKUPS[key] = GridLookup(grid)
        return hit


class GridLookup:
    """Where each pixel centre of a grid lies in other CRSs, computed once per CRS.

    Nearest-neighbour resampling is then cheap: a source pixel is the one that contains the
    output pixel's centre, and every product in the same UTM zone (and every acquisition of
    the same MGRS tile) reuses the same coordinates and indices. Grids up to 64 × 64 are
    transformed exactly with PROJ; larger ones exactly at every 8th pixel and bilinearly in
    between, which stays within 5 µm of PROJ over a 20 km tile for EPSG:27700 ↔ UTM 30 and
    within 30 µm for UTM 31 → UTM 30 at 2.5° E (a millionth of a 20 m pixel), at a fourth of
    the cost (3 vs 14 ms for a 5 km area's 254 × 254 grid).
    """

    EXACT_MAX_PIXELS = 64 * 64
    NODE_STEP = 8

    def __init__(self, grid: Grid):
        self.grid = grid
        self._cache: dict = {}
        self._lock = threading.Lock()

    def coords(self, crs) -> tuple[np.ndarray, np.ndarray]:
        """x, y (float64, grid shape) of the pixel centres in ``crs``."""
        key = _crs_key(crs)
        with self._lock:  # held while computing: threads starting together would repeat the work
            hit = self._cache.get(key)
            if hit is None:
                hit = self._cache[key] = self._coords(crs)
            return hit

    def _coords(self, crs) -> tuple[np.ndarray, np.ndarray]:
        from pyproj import Transformer

        dst = pyproj_crs(crs)
        rows, cols = self.grid.shape
        t = self.grid.transform
        src = pyproj_crs(self.grid.crs)
        if src == dst or rows * cols <= self.EXACT_MAX_PIXELS:
            cc, rr = np.meshgrid(np.arange(cols) + 0.5, np.arange(rows) + 0.5)
            x = t.c + cc * t.a + rr * t.b
            y = t.f + cc * t.d + rr * t.e
            if src != dst:
                x, y = Transformer.from_crs(src, dst, always_xy=True).transform(x, y)
        else:
            x, y = self._lattice(Transformer.from_crs(src, dst, always_xy=True), rows, cols)
        return x, y

    def _lattice(self, transformer, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
        t = self.grid.transform
        step = self.NODE_STEP
        rnodes = np.unique(np.append(np.arange(0, rows, step, dtype=float), rows))
        cnodes = np.unique(np.append(np.arange(0, cols, step, dtype=float), cols))
        nc, nr = np.meshgrid(cnodes, rnodes)
        nx, ny = transformer.transform(t.c + nc * t.a + nr * t.b, t.f + nc * t.d + nr * t.e)
        c = np.arange(cols) + 0.5
        r = np.arange(rows) + 0.5
        ci = np.clip(np.searchsorted(cnodes, c) - 1, 0, len(cnodes) - 2)
        ri = np.clip(np.searchsorted(rnodes, r) - 1, 0, len(rnodes) - 2)
        cf = (c - cnodes[ci]) / (cnodes[ci + 1] - cnodes[ci])
        rf = ((r - rnodes[ri]) / (rnodes[ri + 1] - rnodes[ri]))[:, None]

        def bilinear(a: np.ndarray) -> np.ndarray:
            # separable: along columns on the node rows (small), then along rows
            across = a[:, ci] * (1 - cf) + a[:, ci + 1] * cf
            out = across[ri] * (1 - rf)
            out += across[ri + 1] * rf
            return out

        return bilinear(nx), bilinear(ny)

    def indices(self, crs, transform, width: int, height: int):
        """(flat index into the source window, inside mask, window box) of the source pixels
        under the grid, for a raster with ``transform`` and size in ``crs``: the same for every
        acquisition of one MGRS tile, so memoised."""
        key = ("idx", _crs_key(crs), tuple(transform)[:6], width, height)
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None:
            return hit
        x, y = self.coords(crs)
        with self._lock:  # computed once: the other threads wait for it rather than repeat it
            hit = self._cache.get(key)
            if hit is None:
                hit = self._cache[key] = self._indices(x, y, transform, width, height)
            return hit

    @staticmethod
    def _indices(x, y, transform, width: int, height: int):
        inv = ~transform
        col = _pixel_index(x, y, inv.a, inv.b, inv.c)
        row = _pixel_index(y, x, inv.e, inv.d, inv.f)
        inside = col >= 0
        inside &= col < width
        inside &= row >= 0
        inside &= row < height
        everywhere = bool(inside.all())
        if everywhere or inside.any():
            r, c = (row, col) if everywhere else (row[inside], col[inside])
            box = (int(r.min()), int(r.max()) + 1, int(c.min()), int(c.max()) + 1)
            # np.intp: numpy's take converts any other index type on every call (a copy of the
            # index per product read, twice the time of the gather itself)
            flat = r - box[0]
            flat *= box[3] - box[2]
            flat += c
            flat -= box[2]
            # the raster covers the whole grid: indices in grid shape, no scatter
            result = (flat.astype(np.intp, copy=False), inside, box)
        else:
            result = (None, inside, None)
        return result


def _pixel_index(u: np.ndarray, v: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    """floor(a·u + b·v + c) as int64, in place where it can (grids are several million pixels);
    the same numbers as the plain expression (b·v is skipped only when b is 0, where it adds 0)."""
    out = u * a
    if b != 0.0:
        out += v * b
    out += c
    np.floor(out, out=out)
    return out.astype(np.int64)


def read_on_grid(href: str, grid: Grid, band: int = 1, resampling: str = "nearest",
                 lookup: GridLookup | None = None, overviews: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Band ``band`` of ``href`` on ``grid``; only the blocks under the grid are read.

    Nearest: the source pixel containing each output pixel's centre (see :class:`GridLookup`;
    pass a shared ``lookup`` to transform the grid once for many rasters); with ``overviews``
    from the coarsest overview whose pixels are not larger than the grid's. Other resampling
    goes through GDAL's warper. Returns ``(values, valid)``: ``valid`` is False outside the
    raster and where it has no data. Raises :class:`ReadError`.
    """
    if resampling != "nearest":
        import rasterio

        target, places = check_href(href)
        _check_gdal_host(target, places)
        path = _gdal_path(href, target, places)
        try:
            with gdal_http_env(), rasterio.open(path) as ds:
                return _warp_on_grid(ds, grid, band, resampling)
        except _read_errors() as exc:
            raise ReadError(explain(href, _unsigned(f"{href}: {exc}", path, target))) from exc
    lookup = lookup or lookup_for(grid)
    with open_source(href, band, grid.resolution if overviews else None) as source:
        window = _SourceWindow(source, lookup)
        return window.gather(window.data, 0), window.gather(window.valid(), False)


def classes_on_grid(href: str, grid: Grid, table: np.ndarray, nodata_class: int, band: int = 1,
                    lookup: GridLookup | None = None, overviews: bool = False) -> np.ndarray:
    """A uint8/uint16 raster's values mapped through ``table`` (a lookup table over all its
    values) onto ``grid`` by nearest neighbour; ``nodata_class`` outside the raster and where
    it has no data. The table is applied to the source window before gathering, so one gather
    gives the classes. ``overviews`` as for :func:`read_on_grid`. Raises :class:`ReadError`."""
    lookup = lookup or lookup_for(grid)
    with open_source(href, band, grid.resolution if overviews else None) as source:
        window = _SourceWindow(source, lookup)
        if window.data.dtype.kind != "u" or window.data.dtype.itemsize > 2:
            raise ReadError(f"{href}: class lookup needs an unsigned 8- or 16-bit raster")
        nodata = source.nodata_value()
        if nodata is ALL_VALID:
            classes = np.take(table, window.data)
        elif nodata is not None and 0 <= nodata < len(table):
            folded = table.copy()  # no data is one more class: one pass over the window
            folded[nodata] = nodata_class
            classes = np.take(folded, window.data)
        else:
            classes = np.take(table, window.data)
            classes[~window.valid()] = nodata_class
        return window.gather(classes, nodata_class)


@contextmanager
def open_source(href: str, band: int = 1, resolution: float | None = None) -> Iterator["_Source"]:
    """One band of a raster for window reads, at its full resolution or (``resolution`` given)
    at the coarsest overview whose pixels are not larger than ``resolution``.

    ``href`` is first checked against the catalogue it came from (:func:`check_href`; an
    :class:`Href` from :func:`asset_href` carries it). Plain HTTP(S) COGs of a layout
    :mod:`core.cog` handles are read by it (two round trips, keep-alive connections, every
    connection and redirect checked); layouts it does not handle, and hosts whose TLS
    certificate it could not verify, by GDAL. Errors of either, raised while opening or
    reading, become :class:`ReadError` naming ``href``; a malformed or corrupt file is one,
    never handed on to GDAL. Cancel (core.http.owned_by) raises
    :class:`~core.progress.Cancelled`.
    """
    from . import cog

    target, places = check_href(href)
    source: _Source | None = None
    gdal_target = target
    if band == 1 and cog.enabled_for(target) and _host(target) not in _GDAL_HOSTS:
        try:
            native = cog.open_cog(target, places)
        except cog.HttpError as exc:
            if exc.kind != "certificate":
                raise _read_error(href, exc) from exc
            # curl may trust what Python's TLS does not (another certificate store): GDAL reads
            # this host from now on. Nothing else sends a host to GDAL: one bad file never does.
            _GDAL_HOSTS.add(_host(target))
            native = None
        except cog.Unreadable as exc:
            raise ReadError(explain(href, str(exc))) from exc
        except cog.Unsupported as exc:
            native = None
            gdal_target = getattr(exc, "final_url", None) or target  # where our checked redirects led
        if native is not None:
            source = _NativeSource(native, native.level_for(resolution))
    if source is not None:
        try:
            yield source
        except (cog.HttpError, cog.Unreadable) as exc:
            raise _read_error(href, exc) from exc
        return
    import rasterio

    _check_gdal_host(gdal_target, places)
    path = _gdal_path(href, gdal_target, places)
    try:
        with gdal_http_env(), rasterio.open(path) as ds:
            _say_unverified(ds, href)
            level = _gdal_overview_level(ds, band, resolution)
            if level is None:
                yield _GdalSource(ds, band)
            else:
                with rasterio.open(path, OVERVIEW_LEVEL=level) as ov:
                    yield _GdalSource(ov, band)
    except _read_errors() as exc:
        raise ReadError(explain(href, _unsigned(f"{href}: {exc}", path, gdal_target))) from exc


_UNVERIFIED_SAID: set = set()


def _say_unverified(ds, href: str) -> None:
    """Say, once per host, that a DEFLATE raster read through GDAL is not checked: GDAL's TIFF
    reader stops inflating when a tile's bytes are out, before the zlib checksum, so a corrupted
    tile gives wrong pixels without a word (core.cog checks every tile's checksum and refuses it)."""
    from .progress import log

    if "deflate" not in str(getattr(ds.compression, "value", ds.compression) or "").lower():
        return
    host = _host(str(href)) if "://" in str(href) else "local files"
    if host in _UNVERIFIED_SAID:
        return
    _UNVERIFIED_SAID.add(host)
    log.warning("%s is read through GDAL, which does not verify the DEFLATE checksums of its tiles: a corrupted tile "
                "would give wrong pixels without an error (the plugin's own reader, used unless "
                "CLOUDPROB_NATIVE_COG=NO or the layout needs GDAL, refuses such tiles).", host)


def layer_source(href) -> str:
    """The GDAL path that opens ``href`` as a map layer, as every read opens it: checked against its
    catalogue (:class:`RefusedAsset` when it may not point there), its host checked, signed as the
    catalogue signs (:class:`ReadError` when no token comes)."""
    target, places = check_href(href)
    _check_gdal_host(target, places)
    return _gdal_path(href, target, places)


def _gdal_path(href: str, target: str, places) -> str:
    """GDAL's path for ``target``, signed when the places' signer applies to it (GDAL gets the
    token in the URL: one open, one token). Raises :class:`ReadError` when no token comes."""
    from . import http

    signer = getattr(places, "signer", None)
    if signer is not None and signer.applies(target):
        try:
            target = signer.sign(target)
        except http.TransportError as exc:
            raise ReadError(str(exc)) from exc
    return vsi_path(target)


def _unsigned(message: str, path: str, target: str) -> str:
    """``message`` naming ``target`` where GDAL quoted the signed ``path``, and no signature left."""
    from .planetary import redact

    signed = path[len("/vsicurl/"):] if path.startswith("/vsicurl/") else path
    return redact(message.replace(path, vsi_path(target)).replace(signed, target))


def _read_error(href: str, exc: BaseException) -> ReadError:
    kind = getattr(exc, "kind", None)
    cls = RefusedAsset if kind == "refused" else ReadError
    return cls(explain(href, str(exc)))


def _check_gdal_host(target: str, places) -> None:
    """GDAL makes its own connections (and follows redirects unchecked): refuse an http(s)
    host whose addresses the catalogue may not point to before GDAL is given it."""
    from . import http

    if str(target).startswith(("http://", "https://")) and places is not http.ANYWHERE:
        from urllib.parse import urlsplit

        parts = urlsplit(str(target))
        try:
            places.check_host(parts.hostname or "", parts.port)
        except http.TransportError as exc:
            raise RefusedAsset(f"{target}: {exc}") from exc


def explain(href: str, message: str) -> str:
    """``message`` with what the user can do about it, where we know (Azure blobs, which answer
    a request without a valid SAS token with 403 or 409)."""
    from urllib.parse import urlsplit

    from . import planetary

    status = re.search(r"(?:HTTP|response code:)\s*(\d{3})\b", message.replace(str(href), ""))
    if not status or status.group(1) not in ("403", "409"):
        return message
    catalogue = getattr(href, "catalogue", None) or LOCAL
    signer = catalogue_signer(catalogue)
    if signer is not None and signer.applies(str(href)):
        return message + (f" — the storage refused the SAS token from {signer.token_url}, also a new one: the "
                          "token service may not give tokens for this container")
    if (urlsplit(str(href)).hostname or "").endswith(".blob.core.windows.net") and not planetary.is_signed(str(href)):
        return message + (f" — Azure blobs such as Planetary Computer's are read with SAS tokens: they are signed "
                          f"automatically for items from its STAC API ({planetary.STAC_URL}), and for items from "
                          f"elsewhere when {planetary.TOKEN_URL_ENV} names the token service "
                          f"({planetary.TOKEN_URL})")
    return message


_GDAL_HOSTS: set[str] = set()  # hosts whose TLS certificate the native reader could not verify


def _host(href: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(href).netloc


def _gdal_overview_level(ds, band: int, resolution: float | None) -> int | None:
    """GDAL's OVERVIEW_LEVEL of the coarsest overview not coarser than ``resolution``."""
    if not resolution:
        return None
    best = None
    for i, factor in enumerate(ds.overviews(band)):
        if abs(ds.transform.a) * factor <= resolution * (1 + 1e-6):
            best = i
    return best


ALL_VALID = "all valid"


class _Source:
    """One band of a raster: ``crs``, ``transform``, ``width``, ``height``, ``dtype``,
    ``read(row0, row1, col0, col1)``, ``valid(data, box)`` and ``nodata_value()``."""

    crs: object
    transform: object
    width: int
    height: int
    dtype: np.dtype

    def nodata_value(self):
        """:data:`ALL_VALID`, the integer that alone marks no data, or None (ask ``valid``)."""
        return None


class _NativeSource(_Source):
    def __init__(self, native, level: int):
        self.native, self.level = native, level
        lv = native.levels[level]
        self.crs, self.transform, self.width, self.height = native.crs, lv.transform, lv.width, lv.height
        self.dtype = native.dtype.newbyteorder("=")

    def read(self, row0: int, row1: int, col0: int, col1: int) -> np.ndarray:
        from . import cog
        from .progress import Cancelled

        try:
            return self.native.read(row0, row1, col0, col1, self.level)
        except (cog.HttpError, cog.Unreadable, Cancelled):
            raise
        except Exception as exc:  # whatever else this file trips on: this file, named, not the run
            raise cog.Unreadable(f"{self.native.url}: {exc.__class__.__name__}: {exc}") from exc

    def valid(self, data: np.ndarray, box) -> np.ndarray:
        return self.native.valid(data)

    def nodata_value(self):
        return _integer_nodata(self.native.nodata, self.dtype)


class _GdalSource(_Source):
    def __init__(self, ds, band: int):
        self.ds, self.band = ds, band
        self.crs, self.transform, self.width, self.height = ds.crs, ds.transform, ds.width, ds.height
        self.dtype = np.dtype(ds.dtypes[band - 1])

    def read(self, row0: int, row1: int, col0: int, col1: int) -> np.ndarray:
        return self.ds.read(self.band, window=((row0, row1), (col0, col1)))

    def nodata_value(self):
        from rasterio.enums import MaskFlags

        flags = self.ds.mask_flag_enums[self.band - 1]
        if MaskFlags.all_valid in flags:
            return ALL_VALID
        if MaskFlags.nodata in flags:
            return _integer_nodata(self.ds.nodata, self.dtype)
        return None

    def valid(self, data: np.ndarray, box) -> np.ndarray:
        from rasterio.enums import MaskFlags

        flags = self.ds.mask_flag_enums[self.band - 1]
        if MaskFlags.all_valid in flags:
            return np.ones(data.shape, bool)
        nodata = self.ds.nodata
        if MaskFlags.nodata in flags and nodata is not None:
            if np.isnan(nodata):
                return ~np.isnan(data)
            return data != np.array(nodata).astype(self.dtype)  # no second pass over the blocks
        if box is None:
            return np.zeros(data.shape, bool)
        r0, r1, c0, c1 = box
        return self.ds.read_masks(self.band, window=((r0, r1), (c0, c1))) > 0


def _integer_nodata(nodata, dtype: np.dtype):
    if nodata is None:
        return ALL_VALID
    if dtype.kind in "iu" and not np.isnan(nodata) and float(nodata) == int(nodata):
        return int(nodata)
    return None


class _SourceWindow:
    """The window of one raster band under a grid, read once."""

    def __init__(self, source: _Source, lookup: GridLookup):
        self.source, self.lookup = source, lookup
        self.flat, self.inside, self.box = lookup.indices(source.crs, source.transform, source.width, source.height)
        if self.box is None:
            self.data = np.zeros((0, 0), source.dtype)
            return
        r0, r1, c0, c1 = self.box
        self.data = source.read(r0, r1, c0, c1)

    def valid(self) -> np.ndarray:
        return self.source.valid(self.data, self.box)

    def gather(self, source: np.ndarray, fill) -> np.ndarray:
        """``source`` (window-shaped) onto the grid; ``fill`` where the raster is not."""
        shape = self.lookup.grid.shape
        if self.box is None:
            return np.full(shape, fill, dtype=source.dtype)
        picked = source.ravel().take(self.flat)
        if self.flat.ndim == 2:  # the raster covers the whole grid
            return picked
        out = np.full(shape, fill, dtype=source.dtype)
        out[self.inside] = picked
        return out


def _warp_on_grid(ds, grid: Grid, band: int, resampling: str) -> tuple[np.ndarray, np.ndarray]:
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    with WarpedVRT(ds, crs=grid.crs, transform=grid.transform, width=grid.shape[1], height=grid.shape[0],
                   resampling=Resampling[resampling]) as vrt:
        return vrt.read(band), vrt.read_masks(band) > 0
