"""Reading a window of a Cloud Optimized GeoTIFF over HTTP in two round trips.

GDAL's ``/vsicurl/`` needs three round trips per file (a HEAD for the size, the header, the
blocks); screening through it takes 1.5–5.4× as long (``make bench``). Screening a year of
scenes is nothing but small windows of many files, so for plain HTTP(S) COGs this module reads
them itself: one ranged GET for the header (the first 16 KiB, where a COG keeps its IFDs and
tile indices), then the window's tiles as ranges of neighbouring tiles fetched in parallel on
keep-alive connections, inflated with libdeflate where the system has it (else zlib).

Only what is simple to get exactly right is read here: tiled, single-band, little- or
big-endian classic TIFF or BigTIFF, uncompressed or DEFLATE, horizontal predictor or none,
EPSG-coded CRS, PixelIsArea, nodata from GDAL's tag, no internal mask. Anything else raises
:class:`Unsupported` and the caller hands the file to GDAL; tests check that both readers
return the same arrays.
"""
from __future__ import annotations

import concurrent.futures as cf
import os
import struct
import threading
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

HEADER_BYTES = 16384  # what GDAL fetches first too; a COG's IFDs and tile indices fit in it
MERGE_GAP = 1024  # tiles closer than this are one range (GDAL's COG puts 8 bytes between tiles)
# GDAL settings that mean a request needs more than a plain GET: such files go to GDAL.
_GDAL_HTTP_AUTH_OPTIONS = (
    "GDAL_HTTP_HEADERS", "GDAL_HTTP_HEADER_FILE", "GDAL_HTTP_USERPWD", "GDAL_HTTP_AUTH", "GDAL_HTTP_COOKIE",
    "GDAL_HTTP_BEARER", "GDAL_HTTP_PROXY", "GDAL_HTTP_PROXYUSERPWD", "GDAL_HTTP_NETRC",
    "GDAL_HTTP_UNSAFESSL",  # certificates not checked: the user asked curl for that, not us
)


class Unsupported(Exception):
    """The file's layout is not one this reader handles; read it with GDAL."""


class HttpError(Exception):
    """A request failed (after retries); the message names the URL and the cause. ``status``
    is the HTTP status, or None when no response came (connection, TLS, timeout)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def enabled_for(href: str) -> bool:
    """Whether ``href`` is read here: plain http(s), not disabled by ``CLOUDPROB_NATIVE_COG=NO``,
    and no GDAL HTTP authentication/proxy option configured (those are GDAL's business)."""
    if not href.startswith(("http://", "https://")):
        return False
    if os.environ.get("CLOUDPROB_NATIVE_COG", "YES").upper() in ("NO", "FALSE", "OFF", "0"):
        return False
    try:
        from osgeo import gdal

        return not any(gdal.GetConfigOption(k) for k in _GDAL_HTTP_AUTH_OPTIONS)
    except ImportError:  # pragma: no cover - GDAL is always there with rasterio
        return not any(os.environ.get(k) for k in _GDAL_HTTP_AUTH_OPTIONS)


# ---------------------------------------------------------------------------------------------
# HTTP

_POOL_LOCK = threading.Lock()
_FETCHERS: cf.ThreadPoolExecutor | None = None
_BYTES = 0
_COUNT_LOCK = threading.Lock()


def _fetchers() -> cf.ThreadPoolExecutor:
    """Threads for the parallel ranges of one window (I/O only: they never wait on each other)."""
    global _FETCHERS
    with _POOL_LOCK:
        if _FETCHERS is None:
            _FETCHERS = cf.ThreadPoolExecutor(max_workers=64, thread_name_prefix="cloudprob-range")
        return _FETCHERS


def get_range(url: str, start: int, end: int) -> tuple[bytes, bool]:
    """Bytes ``start`` … ``end - 1`` of ``url``; ``(body, whole)`` where ``whole`` says the server
    ignored the range and sent the whole file. Raises :class:`HttpError`."""
    global _BYTES
    from . import http

    try:
        response = http.get(url, {"Range": f"bytes={start}-{end - 1}", "Accept-Encoding": "identity"})
    except http.TransportError as exc:
        raise HttpError(str(exc)) from exc
    body = response.body
    with _COUNT_LOCK:
        _BYTES += len(body)
    if response.status == 206:
        return body, False
    if response.status == 200:
        return body, True
    if response.status == 416:  # the file ends before ``start``
        return b"", False
    raise HttpError(f"{url}: HTTP {response.status} {response.reason}".rstrip(), response.status)


def bytes_fetched() -> int:
    """Bytes received by this reader since :func:`reset_counters` (process wide)."""
    return _BYTES


def reset_counters() -> None:
    global _BYTES
    with _COUNT_LOCK:
        _BYTES = 0


# ---------------------------------------------------------------------------------------------
# TIFF structure

_RATIONALS = {5: "I", 10: "i"}  # TIFF RATIONAL / SRATIONAL: pairs of (un)signed 32-bit ints
_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 16: 8, 17: 8, 18: 8}
# TIFF numeric types as struct (and, with a byte order, numpy) codes
_STRUCT = {1: "B", 3: "H", 4: "I", 6: "b", 7: "B", 8: "h", 9: "i", 11: "f", 12: "d", 16: "Q", 17: "q", 18: "Q"}
# tags
NEW_SUBFILE_TYPE, WIDTH, HEIGHT, BITS, COMPRESSION, SAMPLES, PREDICTOR = 254, 256, 257, 258, 259, 277, 317
TILE_W, TILE_H, TILE_OFFSETS, TILE_COUNTS, SAMPLE_FORMAT = 322, 323, 324, 325, 339
STRIP_OFFSETS = 273
PIXEL_SCALE, TIEPOINT, MODEL_TRANSFORM, GEOKEYS, GDAL_NODATA = 33550, 33922, 34264, 34735, 42113
DEFLATE = (8, 32946)


class _Header:
    """The start of the file, extended on demand (a header larger than the first fetch)."""

    def __init__(self, url: str):
        self.url = url
        self.data, self.whole = get_range(url, 0, HEADER_BYTES)

    def bytes(self, offset: int, size: int) -> bytes:
        end = offset + size
        if end > len(self.data) and not self.whole:
            more, whole = get_range(self.url, len(self.data), max(end, 2 * len(self.data)))
            self.data = more if whole else self.data + more
            self.whole = whole or len(more) == 0
        if end > len(self.data):
            raise Unsupported(f"{self.url}: truncated TIFF header")
        return self.data[offset:end]


@dataclass
class Level:
    """One resolution level (the full image or an overview) of a COG; its tile index is
    decoded when first read (most reads use one level)."""

    width: int
    height: int
    tile_w: int
    tile_h: int
    transform: object  # rasterio Affine
    _index: object = field(repr=False)  # () -> (offsets, counts), or the pair once decoded

    @property
    def resolution(self) -> float:
        return abs(self.transform.a)

    @property
    def offsets(self) -> np.ndarray:
        return self._tile_index()[0]

    @property
    def counts(self) -> np.ndarray:
        return self._tile_index()[1]

    def _tile_index(self) -> tuple[np.ndarray, np.ndarray]:
        if callable(self._index):
            self._index = self._index()
        return self._index


@dataclass
class CogFile:
    """The header of one COG: enough to read any window of any of its levels."""

    url: str
    crs: str
    dtype: np.dtype  # with the file's byte order
    nodata: float | None
    compression: int
    predictor: int
    levels: list[Level] = field(repr=False)
    whole: bytes | None = field(default=None, repr=False)  # when the server sent the whole file

    @property
    def width(self) -> int:
        return self.levels[0].width

    @property
    def height(self) -> int:
        return self.levels[0].height

    @property
    def transform(self):
        return self.levels[0].transform

    def level_for(self, resolution: float | None) -> int:
        """The coarsest level whose pixels are not larger than ``resolution`` (0 = full)."""
        best = 0
        if resolution:
            for i, level in enumerate(self.levels):
                if level.resolution <= resolution * (1 + 1e-6):
                    best = i
        return best

    def valid(self, data: np.ndarray) -> np.ndarray:
        """Where ``data`` has a value (GDAL's nodata rule: equal to the nodata value, or NaN)."""
        if self.nodata is None:
            return np.ones(data.shape, bool)
        if np.isnan(self.nodata):
            return ~np.isnan(data)
        if data.dtype.kind in "iu" and float(self.nodata) != int(self.nodata):
            return np.ones(data.shape, bool)
        return data != np.array(self.nodata).astype(data.dtype)

    def read(self, row0: int, row1: int, col0: int, col1: int, level: int = 0) -> np.ndarray:
        """Rows ``row0:row1`` and columns ``col0:col1`` of ``level`` (native byte order)."""
        lv = self.levels[level]
        if not (0 <= row0 < row1 <= lv.height and 0 <= col0 < col1 <= lv.width):
            raise ValueError(f"window {row0}:{row1}, {col0}:{col1} outside {lv.height}×{lv.width}")
        out = np.empty((row1 - row0, col1 - col0), self.dtype.newbyteorder("="))
        tiles_across = -(-lv.width // lv.tile_w)
        offsets, counts = lv.offsets, lv.counts
        wanted = []
        for tr in range(row0 // lv.tile_h, (row1 - 1) // lv.tile_h + 1):
            for tc in range(col0 // lv.tile_w, (col1 - 1) // lv.tile_w + 1):
                wanted.append((tr, tc, tr * tiles_across + tc))
        present = [(tr, tc, int(offsets[i]), int(counts[i])) for tr, tc, i in wanted if counts[i] > 0]
        for tr, tc, i in wanted:
            if counts[i] == 0:  # a sparse tile: no data (or zeros), as GDAL reads it
                self._place(out, np.full((lv.tile_h, lv.tile_w), self._fill(), out.dtype), tr, tc, lv, row0, col0)
        ranges = _merge(sorted(present, key=lambda t: t[2]))

        def fetch(group):
            start, end = group[0][2], group[-1][2] + group[-1][3]
            if self.whole is not None:
                body = self.whole[start:end]
            else:
                body, whole = get_range(self.url, start, end)
                if whole:
                    body = body[start:end]
            if len(body) < end - start:
                raise HttpError(f"{self.url}: short read ({len(body)} of {end - start} bytes at {start})")
            for tr, tc, offset, count in group:
                rows = min(lv.tile_h, row0 + out.shape[0] - tr * lv.tile_h)  # the tile's rows above the window's end
                tile = self._decode(body[offset - start:offset - start + count], lv, rows)
                self._place(out, tile, tr, tc, lv, row0, col0)

        # the first range in this thread, the others at the same time in the range pool
        futures = [_fetchers().submit(fetch, g) for g in ranges[1:]]
        try:
            if ranges:
                fetch(ranges[0])
        finally:
            for future in futures:
                future.result()
        return out

    def _fill(self):
        if self.nodata is None or np.isnan(self.nodata) and self.dtype.kind in "iu":
            return 0
        return self.nodata

    def _decode(self, raw: bytes, lv: Level, rows: int) -> np.ndarray:
        """The first ``rows`` rows of a tile (rows are stored in order: zlib stops there;
        libdeflate inflates whole tiles, several times faster still)."""
        n = lv.tile_w * rows
        if self.compression in DEFLATE:
            raw = inflate(raw, lv.tile_w * lv.tile_h * self.dtype.itemsize, n * self.dtype.itemsize, self.url)
        if len(raw) < n * self.dtype.itemsize:
            raise HttpError(f"{self.url}: tile of {len(raw)} bytes, expected {n * self.dtype.itemsize}")
        tile = np.frombuffer(raw, self.dtype, count=n).reshape(rows, lv.tile_w)
        tile = tile.astype(self.dtype.newbyteorder("="), copy=False)
        if self.predictor == 2:
            tile = np.cumsum(tile, axis=1, dtype=tile.dtype)  # wraps like the C arithmetic
        return tile

    @staticmethod
    def _place(out, tile, tr, tc, lv, row0, col0):
        r0, c0 = tr * lv.tile_h, tc * lv.tile_w
        rs, cs = max(r0, row0), max(c0, col0)
        re, ce = min(r0 + lv.tile_h, row0 + out.shape[0]), min(c0 + lv.tile_w, col0 + out.shape[1])
        out[rs - row0:re - row0, cs - col0:ce - col0] = tile[rs - r0:re - r0, cs - c0:ce - c0]


class _Libdeflate:
    """libdeflate's zlib decoder through ctypes (the GIL is released during the call): GDAL
    links it on Debian and most builds, and it inflates COG tiles 5–20× faster than zlib."""

    def __init__(self, path: str):
        import ctypes

        lib = ctypes.CDLL(path)
        lib.libdeflate_alloc_decompressor.restype = ctypes.c_void_p
        lib.libdeflate_alloc_decompressor.argtypes = []
        lib.libdeflate_free_decompressor.restype = None
        lib.libdeflate_free_decompressor.argtypes = [ctypes.c_void_p]
        lib.libdeflate_zlib_decompress.restype = ctypes.c_int
        lib.libdeflate_zlib_decompress.argtypes = [
            ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t,
            ctypes.POINTER(ctypes.c_size_t)]
        self._lib, self._ctypes = lib, ctypes
        self._local = threading.local()  # a decompressor is not shared between threads

    def inflate(self, raw: bytes, size: int) -> np.ndarray | None:
        """The inflated bytes (at most ``size``, as uint8), or None when libdeflate refuses the stream."""
        d = getattr(self._local, "d", None)
        if d is None:
            d = self._local.d = _Decompressor(self._lib)
        out = np.empty(size, np.uint8)
        got = self._ctypes.c_size_t(0)
        status = self._lib.libdeflate_zlib_decompress(d.ptr, raw, len(raw), out.ctypes.data, size,
                                                      self._ctypes.byref(got))
        return out[:got.value] if status == 0 else None


class _Decompressor:
    """One thread's libdeflate decompressor, freed when the thread ends (its thread-local
    storage goes, and this with it): screening and frequency runs start new worker threads."""

    def __init__(self, lib):
        self._lib = lib
        self.ptr = lib.libdeflate_alloc_decompressor()
        if not self.ptr:
            raise MemoryError("libdeflate_alloc_decompressor")

    def __del__(self):
        if self.ptr:
            self._lib.libdeflate_free_decompressor(self.ptr)
            self.ptr = None


def _find_libdeflate() -> _Libdeflate | None:
    if os.environ.get("CLOUDPROB_LIBDEFLATE", "YES").upper() in ("NO", "FALSE", "OFF", "0"):
        return None
    import ctypes.util

    for name in ("libdeflate.so.0", ctypes.util.find_library("deflate"), ctypes.util.find_library("libdeflate")):
        if not name:
            continue
        try:
            return _Libdeflate(name)
        except (OSError, AttributeError):
            continue
    return None


_LIBDEFLATE = _find_libdeflate()


def inflate(raw: bytes, size: int, wanted: int, url: str = ""):
    """A zlib stream inflated (a bytes-like object): all of it (at most ``size`` bytes) with
    libdeflate, or its first ``wanted`` bytes with zlib. Raises :class:`HttpError` for a corrupt
    stream."""
    if _LIBDEFLATE is not None:
        out = _LIBDEFLATE.inflate(raw, size)
        if out is not None:
            return out
        # libdeflate refuses what zlib may still read (e.g. more output than a tile): let zlib say
    try:
        return zlib.decompressobj().decompress(raw, wanted)
    except zlib.error as exc:
        raise HttpError(f"{url}: corrupt DEFLATE tile ({exc})") from exc


def _merge(tiles: list[tuple[int, int, int, int]]) -> list[list[tuple[int, int, int, int]]]:
    groups: list[list] = []
    for t in tiles:
        if groups and t[2] - (groups[-1][-1][2] + groups[-1][-1][3]) <= MERGE_GAP:
            groups[-1].append(t)
        else:
            groups.append([t])
    return groups


HEADER_CACHE_SIZE = 1024  # parsed headers kept per process (a few kB to 16 kB each)
_HEADERS: OrderedDict = OrderedDict()
_HEADERS_LOCK = threading.Lock()


def open_cog(url: str) -> CogFile:
    """The header of the COG at ``url``: fetched and parsed once, then kept for the process
    (as GDAL keeps what /vsicurl/ fetched) until :func:`clear_cache`, so screening the same
    scenes again (another area, other thresholds) costs one round trip per product, not two.

    Raises :class:`HttpError` when it cannot be fetched and :class:`Unsupported` when it is not
    a layout this reader handles (the caller then uses GDAL; that answer is kept too).
    """
    with _HEADERS_LOCK:
        hit = _HEADERS.get(url)
        if hit is not None:
            _HEADERS.move_to_end(url)
    if isinstance(hit, Unsupported):
        raise hit
    if hit is not None:
        return hit
    try:
        parsed = _parse(url)
    except Unsupported as exc:
        _remember(url, exc)
        raise
    if parsed.whole is None:  # not a whole file sent by a server that ignores Range
        _remember(url, parsed)
    return parsed


def _remember(url: str, value) -> None:
    with _HEADERS_LOCK:
        _HEADERS[url] = value
        while len(_HEADERS) > HEADER_CACHE_SIZE:
            _HEADERS.popitem(last=False)


def clear_cache() -> None:
    """Forget the headers kept by :func:`open_cog`."""
    with _HEADERS_LOCK:
        _HEADERS.clear()


def _parse(url: str) -> CogFile:
    head = _Header(url)
    order = head.bytes(0, 2)
    if order not in (b"II", b"MM"):
        raise Unsupported(f"{url}: not a TIFF file")
    e = "<" if order == b"II" else ">"
    magic = struct.unpack(e + "H", head.bytes(2, 2))[0]
    if magic == 42:
        big, ifd = False, struct.unpack(e + "I", head.bytes(4, 4))[0]
    elif magic == 43:
        big, ifd = True, struct.unpack(e + "Q", head.bytes(8, 8))[0]
    else:
        raise Unsupported(f"{url}: not a TIFF file")
    ifds = []
    while ifd and len(ifds) < 64:
        tags, ifd = _read_ifd(head, e, big, ifd)
        ifds.append(tags)
    if not ifds:
        raise Unsupported(f"{url}: no image")
    _prefetch_arrays(head, e, ifds)
    base = ifds[0]
    first = _entry_values(head, e, base)
    if first.get(NEW_SUBFILE_TYPE, [0])[0] & 5:
        raise Unsupported(f"{url}: the first image is not the full-resolution one")
    dtype, compression, predictor = _pixel_format(url, first, e)
    crs, transform = _georeferencing(url, first)
    nodata = _nodata(first)
    levels = [_level(url, head, e, base, first, transform, None)]
    for tags in ifds[1:]:
        values = _entry_values(head, e, tags, _LEVEL_TAGS)
        kind = values.get(NEW_SUBFILE_TYPE, [0])[0]
        if kind & 4:
            raise Unsupported(f"{url}: internal mask (GDAL reads it)")
        if not kind & 1:
            continue  # another page, not an overview: not ours to read
        if _pixel_format(url, values, e) != (dtype, compression, predictor):
            raise Unsupported(f"{url}: overviews stored differently from the image")
        levels.append(_level(url, head, e, tags, values, transform, levels[0]))
    levels.sort(key=lambda lv: -lv.width)
    return CogFile(url, crs, dtype, nodata, compression, predictor, levels, head.data if head.whole else None)


def _prefetch_arrays(head: _Header, e: str, ifds: list[dict]) -> None:
    """Fetch, in at most one more request, the tile indices that lie past the first fetch (a
    COG with many tiles; GDAL's COG driver keeps them all before the first tile)."""
    end = 0
    for tags in ifds:
        for tag in (TILE_OFFSETS, TILE_COUNTS):
            if tag in tags:
                typ, count, value, value_size = tags[tag]
                if _SIZES.get(typ, 0) * count > value_size:
                    (offset,) = struct.unpack(e + ("Q" if value_size == 8 else "I"), value)
                    end = max(end, offset + _SIZES[typ] * count)
    if end > len(head.data):
        head.bytes(0, end)


def _read_ifd(head: _Header, e: str, big: bool, offset: int):
    count_fmt, entry_size, value_size = ("Q", 20, 8) if big else ("H", 12, 4)
    n = struct.unpack(e + count_fmt, head.bytes(offset, 8 if big else 2))[0]
    start = offset + (8 if big else 2)
    raw = head.bytes(start, n * entry_size + value_size)
    layout = e + ("HHQ8s" if big else "HHI4s")
    tags = {tag: (typ, count, value, value_size)
            for tag, typ, count, value in struct.iter_unpack(layout, raw[:n * entry_size])}
    nxt_raw = raw[n * entry_size:n * entry_size + value_size]
    nxt = struct.unpack(e + ("Q" if big else "I"), nxt_raw)[0]
    return tags, nxt


def _values(head: _Header, e: str, entry) -> list | bytes:
    typ, count, value, value_size = entry
    if typ not in _SIZES:
        return []
    size = _SIZES[typ] * count
    if size <= value_size:
        raw = value[:size]
    else:
        (offset,) = struct.unpack(e + ("Q" if value_size == 8 else "I"), value)
        raw = head.bytes(offset, size)
    if typ == 2:
        return raw
    if typ in (5, 10):
        ints = struct.unpack(e + _RATIONALS[typ] * (2 * count), raw)
        return [a / b if b else float("nan") for a, b in zip(ints[::2], ints[1::2])]
    if count <= 64:  # a tag's few numbers: a tuple (numpy costs more than the parsing itself)
        return struct.unpack(f"{e}{count}{_STRUCT[typ]}", raw)
    return np.frombuffer(raw, np.dtype(e + _STRUCT[typ]), count=count)


_LEVEL_TAGS = (NEW_SUBFILE_TYPE, WIDTH, HEIGHT, BITS, COMPRESSION, SAMPLES, PREDICTOR, TILE_W, TILE_H, SAMPLE_FORMAT,
               STRIP_OFFSETS)
_IMAGE_TAGS = _LEVEL_TAGS + (PIXEL_SCALE, TIEPOINT, MODEL_TRANSFORM, GEOKEYS, GDAL_NODATA)


def _entry_values(head: _Header, e: str, tags: dict, wanted=_IMAGE_TAGS) -> dict:
    return {t: _values(head, e, tags[t]) for t in wanted if t in tags}


def _pixel_format(url: str, v: dict, e: str):
    if STRIP_OFFSETS in v or TILE_W not in v:
        raise Unsupported(f"{url}: not tiled")
    if int(v.get(SAMPLES, [1])[0]) != 1:
        raise Unsupported(f"{url}: more than one band")
    compression = int(v.get(COMPRESSION, [1])[0])
    if compression != 1 and compression not in DEFLATE:
        raise Unsupported(f"{url}: compression {compression}")
    predictor = int(v.get(PREDICTOR, [1])[0])
    bits = int(v.get(BITS, [1])[0])
    kind = {1: "u", 2: "i", 3: "f"}.get(int(v.get(SAMPLE_FORMAT, [1])[0]))
    if kind is None or bits not in (8, 16, 32, 64) or (kind == "f" and bits < 32):
        raise Unsupported(f"{url}: {bits}-bit samples of format {v.get(SAMPLE_FORMAT)}")
    if predictor not in (1, 2) or (predictor == 2 and kind == "f"):
        raise Unsupported(f"{url}: predictor {predictor}")
    return np.dtype(f"{e}{kind}{bits // 8}"), compression, predictor


def _level(url, head, e, tags, values, base_transform, full: Level | None) -> Level:
    from rasterio.transform import Affine

    width, height = int(values[WIDTH][0]), int(values[HEIGHT][0])
    tile_w, tile_h = int(values[TILE_W][0]), int(values[TILE_H][0])
    if TILE_OFFSETS not in tags or TILE_COUNTS not in tags:
        raise Unsupported(f"{url}: no tile index")
    n = -(-width // tile_w) * -(-height // tile_h)
    if tags[TILE_OFFSETS][1] < n or tags[TILE_COUNTS][1] < n:
        raise Unsupported(f"{url}: incomplete tile index")

    def index() -> tuple[np.ndarray, np.ndarray]:  # the header is all fetched by now (_prefetch_arrays)
        return (np.asarray(_values(head, e, tags[TILE_OFFSETS]), np.int64),
                np.asarray(_values(head, e, tags[TILE_COUNTS]), np.int64))

    if full is None:
        transform = base_transform
    else:  # GDAL's rule: the overview spans the image, its pixels are the image's scaled by the size ratio
        transform = base_transform * Affine.scale(full.width / width, full.height / height)
    return Level(width, height, tile_w, tile_h, transform, index)


def _georeferencing(url: str, v: dict):
    from rasterio.transform import Affine

    keys = v.get(GEOKEYS)
    if keys is None or len(keys) < 4:
        raise Unsupported(f"{url}: no GeoTIFF keys")
    geokeys = {}
    for i in range(int(keys[3])):
        key, location, count, value = (int(x) for x in keys[4 + 4 * i:8 + 4 * i])
        geokeys[key] = value if location == 0 else None  # only SHORT keys are needed here
    model = geokeys.get(1024)
    code = geokeys.get(3072) if model == 1 else geokeys.get(2048) if model == 2 else None
    if not code or code == 32767:
        raise Unsupported(f"{url}: CRS without an EPSG code")
    if geokeys.get(1025, 1) != 1:
        raise Unsupported(f"{url}: PixelIsPoint")
    if MODEL_TRANSFORM in v:
        m = [float(x) for x in v[MODEL_TRANSFORM]]
        transform = Affine(m[0], m[1], m[3], m[4], m[5], m[7])
    elif PIXEL_SCALE in v and TIEPOINT in v:
        sx, sy = float(v[PIXEL_SCALE][0]), float(v[PIXEL_SCALE][1])
        i, j, _, x, y, _ = (float(t) for t in v[TIEPOINT][:6])
        transform = Affine(sx, 0.0, x - i * sx, 0.0, -sy, y + j * sy)
    else:
        raise Unsupported(f"{url}: no geotransform")
    return f"EPSG:{code}", transform


def _nodata(v: dict) -> float | None:
    raw = v.get(GDAL_NODATA)
    if raw is None:
        return None
    text = bytes(raw).split(b"\0", 1)[0].decode("ascii", "replace").strip()
    try:
        return float(text)
    except ValueError:
        return float("nan") if text.lower() == "nan" else None
