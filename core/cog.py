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
# Hard limits: what a server or a file claims never decides what is allocated.
MAX_HEADER_BYTES = 16 * 1024 * 1024  # IFDs and tile indices (~1 M tiles); beyond, GDAL reads the file
MAX_TILE_BYTES = 16 * 1024 * 1024  # one decoded tile (Sentinel-2: 0.25–2 MiB); beyond, unreadable
MAX_RESPONSE_BYTES = 32 * 1024 * 1024  # one answer: a range of tiles, or a whole file from a server ignoring Range
# GDAL settings that mean a request needs more than a plain GET: such files go to GDAL.
_GDAL_HTTP_AUTH_OPTIONS = (
    "GDAL_HTTP_HEADERS", "GDAL_HTTP_HEADER_FILE", "GDAL_HTTP_USERPWD", "GDAL_HTTP_AUTH", "GDAL_HTTP_COOKIE",
    "GDAL_HTTP_BEARER", "GDAL_HTTP_PROXY", "GDAL_HTTP_PROXYUSERPWD", "GDAL_HTTP_NETRC",
    "GDAL_HTTP_UNSAFESSL",  # certificates not checked: the user asked curl for that, not us
)


class Unsupported(Exception):
    """The file's layout is not one this reader handles; read it with GDAL."""


class Unreadable(Exception):
    """The file cannot be read right, by this reader or any other: a malformed header, a
    corrupt tile, an answer that is not what was asked for, or beyond the hard limits. The
    message names the URL and what is wrong; the product is unreadable (GDAL is not asked)."""


class HttpError(Exception):
    """A request failed (after retries); the message names the URL and the cause. ``status``
    is the HTTP status, or None when no response came; ``kind`` is then core.http's
    (``connection``, ``certificate``, ``deadline``, ``refused``…)."""

    def __init__(self, message: str, status: int | None = None, kind: str | None = None):
        super().__init__(message)
        self.status = status
        self.kind = kind


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


def get_range(url: str, start: int, end: int, places=None) -> tuple[bytes, bool]:
    """Bytes ``start`` … ``end - 1`` of ``url``; ``(body, whole)`` where ``whole`` says the server
    ignored the range and sent the whole file (at most :data:`MAX_RESPONSE_BYTES`). Raises
    :class:`HttpError`, or :class:`Unreadable` for an answer that is not the bytes asked for."""
    body, whole, _ = _get_range(url, start, end, places)
    return body, whole


def _get_range(url: str, start: int, end: int, places=None) -> tuple[bytes, bool, str]:
    """:func:`get_range`, and the URL that answered (after redirects)."""
    global _BYTES
    from . import http

    def limit(status: int, headers: dict) -> int:
        if status == 206:  # exactly the bytes asked for, or up to the end of a shorter file
            first, last, _ = _content_range(url, headers.get("content-range", ""), start, end)
            return last - first + 1
        if status == 200:
            return MAX_RESPONSE_BYTES  # the server ignores Range: the whole file, if not too large
        return 0

    try:
        response = http.get(url, {"Range": f"bytes={start}-{end - 1}"}, limit=limit,
                            places=places if places is not None else http.ANYWHERE)
    except http.TransportError as exc:
        if exc.kind in ("too-large", "malformed"):
            raise Unreadable(str(exc)) from exc
        raise HttpError(str(exc), None, exc.kind) from exc
    body = response.body
    with _COUNT_LOCK:
        _BYTES += len(body)
    if response.status == 206:
        first, last, _ = _content_range(url, response.headers.get("content-range", ""), start, end)
        if len(body) != last - first + 1:
            raise Unreadable(f"{url}: {len(body)} bytes for the range {first}-{last} the server announced")
        return body, False, response.url
    if response.status == 200:
        return body, True, response.url
    if response.status == 416:  # the file ends before ``start``
        return b"", False, response.url
    raise HttpError(f"{url}: HTTP {response.status} {response.reason}".rstrip(), response.status)


def _content_range(url: str, value: str, start: int, end: int) -> tuple[int, int, int | None]:
    """(first, last, size) of a 206 answer's ``Content-Range``, which must be the range asked
    for (``start`` … ``end - 1``), or its part before the end of the file."""
    import re

    match = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", value or "")
    if not match:
        raise Unreadable(f"{url}: a partial answer without a valid Content-Range ({value[:60]!r}) "
                         f"for the bytes {start}-{end - 1}")
    first, last = int(match.group(1)), int(match.group(2))
    size = None if match.group(3) == "*" else int(match.group(3))
    whole_ask = last == end - 1 or (size is not None and last == size - 1 and last < end - 1)
    if first != start or last < first or not whole_ask or (size is not None and last >= size):
        raise Unreadable(f"{url}: the server sent the bytes {first}-{last}"
                         f"{'' if size is None else f' of {size}'} for a request of {start}-{end - 1}")
    return first, last, size


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
    """The start of the file, extended on demand (a header larger than the first fetch), never
    beyond :data:`MAX_HEADER_BYTES`."""

    def __init__(self, url: str, places=None):
        self.url, self.places = url, places
        self.data, self.whole, self.final_url = _get_range(url, 0, HEADER_BYTES, places)

    def bytes(self, offset: int, size: int) -> bytes:
        end = offset + size
        if end > len(self.data) and not self.whole:
            if end > MAX_HEADER_BYTES:
                raise Unsupported(f"{self.url}: a TIFF header past {MAX_HEADER_BYTES // 2**20} MiB (GDAL reads it)")
            more, whole = get_range(self.url, len(self.data), min(MAX_HEADER_BYTES, max(end, 2 * len(self.data))),
                                    self.places)
            self.data = more if whole else self.data + more
            self.whole = whole or len(more) == 0
        if end > len(self.data):
            raise Unreadable(f"{self.url}: the file ends at byte {len(self.data):,}, inside its TIFF header "
                             f"(which goes on to byte {end:,})")
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
    places: object = field(default=None, repr=False)  # core.http.Places the tiles may be read from
    final_url: str = ""  # where the header came from, after redirects (what GDAL is given)

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
        """Rows ``row0:row1`` and columns ``col0:col1`` of ``level`` (native byte order).
        Raises :class:`HttpError`, or :class:`Unreadable` for a tile that does not decode to
        exactly a tile (DEFLATE's checksum is checked: a flipped bit is an error, never pixels)."""
        from . import http

        lv = self.levels[level]
        if not (0 <= row0 < row1 <= lv.height and 0 <= col0 < col1 <= lv.width):
            raise ValueError(f"window {row0}:{row1}, {col0}:{col1} outside {lv.height}×{lv.width}")
        out = np.empty((row1 - row0, col1 - col0), self.dtype.newbyteorder("="))
        tiles_across = -(-lv.width // lv.tile_w)
        try:
            offsets, counts = lv.offsets, lv.counts
        except (ValueError, TypeError, struct.error) as exc:
            raise Unreadable(f"{self.url}: unreadable tile index ({exc})") from exc
        tile_bytes = lv.tile_w * lv.tile_h * self.dtype.itemsize
        most = tile_bytes + tile_bytes // 100 + 1024 if self.compression in DEFLATE else tile_bytes
        wanted = []
        for tr in range(row0 // lv.tile_h, (row1 - 1) // lv.tile_h + 1):
            for tc in range(col0 // lv.tile_w, (col1 - 1) // lv.tile_w + 1):
                wanted.append((tr, tc, tr * tiles_across + tc))
        present = []
        for tr, tc, i in wanted:
            offset, count = int(offsets[i]), int(counts[i])
            if count == 0:  # a sparse tile: no data (or zeros), as GDAL reads it
                self._place(out, np.full((lv.tile_h, lv.tile_w), self._fill(), out.dtype), tr, tc, lv, row0, col0)
            elif count < 0 or offset < 0 or count > most:
                raise Unreadable(f"{self.url}: tile {tr},{tc} is said to take {count:,} bytes at {offset:,} "
                                 f"(a tile is {tile_bytes:,} bytes decoded)")
            else:
                present.append((tr, tc, offset, count))
        ranges = _merge(sorted(present, key=lambda t: t[2]))
        owner = http.current_owner()

        def fetch(group):
            with http.owned_by(owner):  # Cancel reaches the range threads too
                start, end = group[0][2], group[-1][2] + group[-1][3]
                if self.whole is not None:
                    body = self.whole[start:end]
                else:
                    body, whole = get_range(self.url, start, end, self.places)
                    if whole:
                        body = body[start:end]
                if len(body) < end - start:
                    raise Unreadable(f"{self.url}: the file ends before its tiles do ({len(body):,} of "
                                     f"{end - start:,} bytes at {start:,})")
                for tr, tc, offset, count in group:
                    rows = min(lv.tile_h, row0 + out.shape[0] - tr * lv.tile_h)  # the tile's rows above the window's end
                    tile = self._decode(body[offset - start:offset - start + count], lv, rows)
                    self._place(out, tile, tr, tc, lv, row0, col0)

        # the first range in this thread, the others at the same time in the range pool
        futures = [_fetchers().submit(fetch, g) for g in ranges[1:]]
        errors = []
        try:
            if ranges:
                fetch(ranges[0])
        except BaseException as exc:  # the others are waited for (nothing left running), then this is raised
            errors.append(exc)
        for future in futures:
            try:
                future.result()
            except BaseException as exc:
                errors.append(exc)
        if errors:
            raise errors[0]
        return out

    def _fill(self):
        if self.nodata is None or np.isnan(self.nodata) and self.dtype.kind in "iu":
            return 0
        return self.nodata

    def _decode(self, raw: bytes, lv: Level, rows: int) -> np.ndarray:
        """The first ``rows`` rows of a tile, after inflating all of it (the checksum is at the end)."""
        size = lv.tile_w * lv.tile_h * self.dtype.itemsize
        if self.compression in DEFLATE:
            raw = inflate(raw, size, self.url)
        elif len(raw) != size:
            raise Unreadable(f"{self.url}: an uncompressed tile of {len(raw):,} bytes, expected {size:,}")
        n = lv.tile_w * rows
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

    def inflate(self, raw: bytes, size: int) -> tuple[np.ndarray, int]:
        """(the inflated bytes, at most ``size``, as uint8; libdeflate's status, 0 for success)."""
        d = getattr(self._local, "d", None)
        if d is None:
            d = self._local.d = _Decompressor(self._lib)
        out = np.empty(size, np.uint8)
        got = self._ctypes.c_size_t(0)
        status = self._lib.libdeflate_zlib_decompress(d.ptr, raw, len(raw), out.ctypes.data, size,
                                                      self._ctypes.byref(got))
        return out[:got.value], status


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


_LIBDEFLATE_STATUS = {1: "bad data", 2: "short output", 3: "more data than a tile"}


def inflate(raw: bytes, size: int, url: str = ""):
    """A zlib stream inflated to exactly ``size`` bytes (a bytes-like object), its Adler-32
    checksum verified: libdeflate when the system has it, else zlib. Raises
    :class:`Unreadable` for a corrupt stream, a wrong checksum, or an output of any other
    size (a tile is always whole)."""
    if _LIBDEFLATE is not None:
        out, status = _LIBDEFLATE.inflate(raw, size)
        if status != 0:
            raise Unreadable(f"{url}: corrupt DEFLATE tile ({_LIBDEFLATE_STATUS.get(status, status)})")
    else:
        d = zlib.decompressobj()
        try:
            out = d.decompress(raw, size)
            beyond = d.decompress(d.unconsumed_tail, 1) if d.unconsumed_tail or not d.eof else b""
        except zlib.error as exc:
            raise Unreadable(f"{url}: corrupt DEFLATE tile ({exc})") from exc
        if beyond:
            raise Unreadable(f"{url}: corrupt DEFLATE tile (more data than a tile)")
        if not d.eof:
            raise Unreadable(f"{url}: corrupt DEFLATE tile (the stream ends before its checksum)")
    if len(out) != size:
        raise Unreadable(f"{url}: corrupt DEFLATE tile ({len(out):,} bytes, a tile is {size:,})")
    return out


def _merge(tiles: list[tuple[int, int, int, int]]) -> list[list[tuple[int, int, int, int]]]:
    """Tiles (sorted by offset) in groups read as one range: neighbours, up to
    :data:`MAX_RESPONSE_BYTES` per range."""
    groups: list[list] = []
    for t in tiles:
        if (groups and t[2] - (groups[-1][-1][2] + groups[-1][-1][3]) <= MERGE_GAP
                and t[2] + t[3] - groups[-1][0][2] <= MAX_RESPONSE_BYTES):
            groups[-1].append(t)
        else:
            groups.append([t])
    return groups


HEADER_CACHE_SIZE = 4096  # parsed headers kept per process (a few kB each; a national run reads ~3,000 per row of tiles)
_HEADERS: OrderedDict = OrderedDict()
_HEADERS_LOCK = threading.Lock()


def open_cog(url: str, places=None) -> CogFile:
    """The header of the COG at ``url``: fetched and parsed once, then kept for the process
    (as GDAL keeps what /vsicurl/ fetched) until :func:`clear_cache`, so screening the same
    scenes again (another area, other thresholds) costs one round trip per product, not two.
    ``places`` (core.http.Places): where its requests may go.

    Raises :class:`HttpError` when it cannot be fetched, :class:`Unreadable` when it is
    malformed or beyond the limits, and :class:`Unsupported` when it is not a layout this
    reader handles (the caller then uses GDAL; that answer is kept too).
    """
    key = (url, places)
    with _HEADERS_LOCK:
        hit = _HEADERS.get(key)
        if hit is not None:
            _HEADERS.move_to_end(key)
    if isinstance(hit, Unsupported):
        raise hit
    if hit is not None:
        return hit
    try:
        parsed = _parse(url, places)
    except Unsupported as exc:
        _remember(key, exc)
        raise
    if parsed.whole is None:  # not a whole file sent by a server that ignores Range
        _remember(key, parsed)
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


def _parse(url: str, places=None) -> CogFile:
    head = _Header(url, places)
    try:
        return _parse_header(url, head, places)
    except (Unsupported, Unreadable, HttpError):
        raise
    except Exception as exc:  # whatever a malformed header trips on: this file, named
        raise Unreadable(f"{url}: a malformed TIFF header ({exc.__class__.__name__}: {exc})") from exc


def _parse_header(url: str, head: _Header, places) -> CogFile:
    try:
        return _parse_tags(url, head, places)
    except Unsupported as exc:
        exc.final_url = head.final_url  # GDAL is given the address our checked redirects led to
        raise


def _parse_tags(url: str, head: _Header, places) -> CogFile:
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
    levels = [_level(url, head, e, base, first, transform, None, dtype)]
    for tags in ifds[1:]:
        values = _entry_values(head, e, tags, _LEVEL_TAGS)
        kind = values.get(NEW_SUBFILE_TYPE, [0])[0]
        if kind & 4:
            raise Unsupported(f"{url}: internal mask (GDAL reads it)")
        if not kind & 1:
            continue  # another page, not an overview: not ours to read
        if _pixel_format(url, values, e) != (dtype, compression, predictor):
            raise Unsupported(f"{url}: overviews stored differently from the image")
        levels.append(_level(url, head, e, tags, values, transform, levels[0], dtype))
    levels.sort(key=lambda lv: -lv.width)
    return CogFile(url, crs, dtype, nodata, compression, predictor, levels, head.data if head.whole else None,
                   places, head.final_url)


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


_TAG_NAMES = {WIDTH: "ImageWidth", HEIGHT: "ImageLength", TILE_W: "TileWidth", TILE_H: "TileLength"}


def _level(url, head, e, tags, values, base_transform, full: Level | None, dtype: np.dtype) -> Level:
    from rasterio.transform import Affine

    from .compat import compose

    for tag, name in _TAG_NAMES.items():
        if len(values.get(tag) or ()) < 1:
            raise Unreadable(f"{url}: an image without its {name} tag")
    width, height = int(values[WIDTH][0]), int(values[HEIGHT][0])
    tile_w, tile_h = int(values[TILE_W][0]), int(values[TILE_H][0])
    if min(width, height, tile_w, tile_h) <= 0:
        raise Unreadable(f"{url}: an image of {width}×{height} pixels in tiles of {tile_w}×{tile_h}")
    if tile_w * tile_h * dtype.itemsize > MAX_TILE_BYTES:
        raise Unreadable(f"{url}: tiles of {tile_w}×{tile_h} pixels ({tile_w * tile_h * dtype.itemsize / 2**20:,.0f} MiB "
                         f"each), more than the {MAX_TILE_BYTES // 2**20} MiB per tile this plugin decodes")
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
        transform = compose(base_transform, Affine.scale(full.width / width, full.height / height))
    return Level(width, height, tile_w, tile_h, transform, index)


def _georeferencing(url: str, v: dict):
    from rasterio.transform import Affine

    keys = v.get(GEOKEYS)
    if keys is None or len(keys) < 4:
        raise Unsupported(f"{url}: no GeoTIFF keys")
    if len(keys) < 4 + 4 * int(keys[3]):
        raise Unreadable(f"{url}: its GeoKeyDirectory declares {int(keys[3])} keys but holds {(len(keys) - 4) // 4}")
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
    if not all(np.isfinite(tuple(transform)[:6])) or transform.a * transform.e - transform.b * transform.d == 0:
        raise Unreadable(f"{url}: a degenerate geotransform {tuple(transform)[:6]}")
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
