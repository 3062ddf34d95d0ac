"""A synthetic UK-like year of Sentinel-2 Collection-1 products for the national benchmark.

What it is (``NationalSpec`` holds the numbers; ``describe()`` prints the counts):

* **Land**: crude lon/lat polygons of Great Britain (mainland, Outer Hebrides, Skye, Mull,
  Isle of Wight, Orkney, Shetland) and Northern Ireland, ~150 vertices in all — not a
  coastline, but the UK's shape and extent: about 660 × 1,210 km in EPSG:27700 (x −10…690 km,
  y 0…1,230 km with Shetland). The sea is SCL no data (0), as the brief asks.
* **Tiles**: MGRS-like 109.8 km tiles of 5490 × 5490 pixels at 20 m in EPSG:32629/32630/32631:
  the 100 km squares of UTM zones 29–31 (real MGRS letters) that meet their zone and whose
  tile meets the land (76 tiles); each tile starts at its square's north-west corner and runs 109.8 km east and
  south, so neighbours overlap by 9.8 km and tiles of neighbouring zones overlap as real ones do.
* **Orbits**: descending swaths 290 km wide, ground tracks 165 km apart (the spacing of
  neighbouring relative orbits at 54° N), tilted 12° from grid north, relative orbits 43 apart
  west to east (R094 and R137 meet near Greenwich, as in the sample archive). Sentinel-2A and
  2B each revisit an orbit every 10 days, 5 days apart. A datatake is one pass of one satellite
  over the whole UK; it yields one item per tile whose footprint meets its swath (≥ 1 % of the
  tile), so most pixels see one or two orbits and tiles at a swath edge are partial.
* **Pixels**: per tile a bounded pool of patterns (``full_patterns`` whole-swath ones of
  different cloud cover, ``partial_patterns`` per relative orbit whose swath edge crosses the
  tile, the pixels beyond the edge no data). Each item's ``SCL.tif`` and ``CLD_20m.tif`` are
  symbolic links, under the item's own folder, to one pattern of its tile (picked by a hash of
  the datatake): every item has its own URLs, so no reader cache can profit from the reuse,
  while the disk holds only the pool. The SCL has land-cover texture (vegetation, not
  vegetated, water, dark, unclassified speckle), clouds 8/9 from a smooth random field, thin
  cirrus 10 and shadows 3 displaced from the clouds; ``CLD_20m`` is Sen2Cor-like: 0 over most
  clear land, high and smooth under clouds, a little noise; 0 where the SCL is 0. Both uint8
  COGs, DEFLATE, 512-pixel blocks, overviews, GDAL nodata tag 0 (as Earth Search declares).
* **Items**: Earth Search Collection-1 items (``sentinel-2-c1-l2a``) with the real item's
  23 assets and properties (so an item weighs what a real one does, ~17 KB of JSON), one
  per line in ``items.ndjson``, hrefs relative to the archive folder.
* **Zones**: ``n_zones`` Voronoi cells over the land in EPSG:27700 (30 % of the seeds in
  city clusters, like LSOAs), clipped to the land, field ``code``.

``prepare(fraction)`` selects a sub-extent holding ``fraction`` of the full extent's area (the
same aspect ratio, centred on the extent's centre), writes (or reuses) the tiles it needs,
and returns the items meeting it, the grid bounds and the zones clipped to it. Everything is
cached under ``.build/national/<version>-<spec hash>/``: the pool once per tile, the items and
zones once, each fraction's selection once.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
import zlib
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path

import numpy as np

GENERATOR_VERSION = 1  # bump when the output changes for the same spec: cached archives are rebuilt
RES = 20.0
TILE_PX = 5490
TILE_M = TILE_PX * RES  # 109.8 km
COLLECTION = "sentinel-2-c1-l2a"

# --- land: crude outlines (lon, lat), clockwise or not, closed by shapely -----------------------
GREAT_BRITAIN = [
    (-5.71, 50.06), (-5.20, 49.96), (-4.20, 50.33), (-3.64, 50.22), (-3.40, 50.62), (-2.45, 50.58),
    (-1.95, 50.71), (-1.30, 50.80), (-0.80, 50.74), (0.25, 50.74), (0.98, 50.91), (1.38, 51.15),
    (1.44, 51.38), (0.70, 51.45), (0.95, 51.62), (1.28, 51.90), (1.75, 52.45), (1.72, 52.75),
    (1.30, 52.94), (0.50, 52.97), (0.30, 52.82), (0.34, 53.14), (0.15, 53.45), (0.12, 53.60),
    (-0.08, 54.12), (-0.60, 54.49), (-1.15, 54.66), (-1.42, 55.02), (-1.62, 55.60), (-2.00, 55.80),
    (-2.50, 56.00), (-3.00, 56.02), (-2.58, 56.28), (-2.50, 56.58), (-2.08, 57.15), (-1.78, 57.50),
    (-2.00, 57.69), (-3.00, 57.68), (-4.15, 57.55), (-3.80, 57.85), (-3.09, 58.44), (-3.05, 58.65),
    (-4.00, 58.60), (-5.00, 58.62), (-5.30, 58.20), (-5.70, 57.80), (-5.80, 57.30), (-6.20, 56.70),
    (-5.60, 56.20), (-5.80, 55.30), (-5.00, 55.70), (-4.75, 55.40), (-5.00, 55.00), (-4.85, 54.65),
    (-4.40, 54.70), (-3.60, 54.90), (-3.63, 54.50), (-3.20, 54.10), (-2.90, 54.00), (-3.05, 53.82),
    (-3.20, 53.40), (-3.90, 53.30), (-4.60, 53.30), (-4.75, 52.80), (-4.10, 52.50), (-4.70, 52.10),
    (-5.30, 51.86), (-5.10, 51.60), (-4.20, 51.55), (-3.20, 51.40), (-2.70, 51.50), (-3.00, 51.20),
    (-4.20, 51.20), (-4.55, 51.00), (-5.00, 50.55),
]
NORTHERN_IRELAND = [
    (-7.25, 55.07), (-6.20, 55.25), (-5.72, 54.80), (-5.45, 54.45), (-5.70, 54.22), (-6.10, 54.02),
    (-6.60, 54.20), (-7.00, 54.15), (-7.60, 54.12), (-8.15, 54.45), (-7.70, 54.65), (-7.45, 54.85),
]
ISLANDS = [
    [(-7.55, 56.80), (-7.10, 57.40), (-6.20, 58.50), (-6.90, 58.30), (-7.30, 57.70), (-7.60, 57.00)],  # Outer Hebrides
    [(-6.75, 57.50), (-6.25, 57.70), (-5.70, 57.20), (-6.20, 57.05)],  # Skye
    [(-6.40, 56.30), (-5.70, 56.48), (-6.20, 56.65)],  # Mull
    [(-1.57, 50.67), (-1.15, 50.76), (-1.08, 50.66), (-1.30, 50.57)],  # Isle of Wight
    [(-3.40, 58.95), (-2.70, 59.12), (-2.75, 58.75), (-3.30, 58.80)],  # Orkney
    [(-1.35, 60.10), (-1.00, 60.80), (-0.78, 60.70), (-1.20, 59.85)],  # Shetland
]
# city centres (lon, lat, relative weight) for the zones' seeds
CITIES = [
    (-0.12, 51.51, 8), (-1.90, 52.48, 3), (-2.24, 53.48, 3), (-1.55, 53.80, 2), (-2.99, 53.41, 2),
    (-1.47, 53.38, 1.5), (-2.59, 51.45, 1.5), (-1.62, 54.97, 1.5), (-1.15, 52.95, 1.2), (-4.25, 55.86, 2),
    (-3.19, 55.95, 1.3), (-3.18, 51.48, 1.2), (-5.93, 54.60, 1.2), (-1.40, 50.90, 1), (-1.08, 50.80, 0.8),
    (-0.14, 50.83, 0.8), (-1.52, 52.41, 0.8), (-1.13, 52.64, 0.8), (-0.34, 53.74, 0.8), (-2.10, 57.15, 0.7),
]


@dataclass(frozen=True)
class NationalSpec:
    year: int = 2024
    seed: int = 27700
    swath_km: float = 290.0
    track_spacing_km: float = 165.0
    track_tilt_deg: float = 12.0
    orbit_step: int = 43  # relative orbit number of the next track east
    reference_orbit: int = 137  # the track whose west edge is near Greenwich
    reference_track_x_km: float = 690.0  # its centre at y = 600 km (EPSG:27700)
    full_patterns: int = 4
    full_cloud_cover: tuple = (0.08, 0.35, 0.6, 0.9)
    partial_patterns: int = 2
    n_zones: int = 47_000
    blocksize: int = 512
    min_tile_share: float = 0.01  # an item is made when its swath covers this share of the tile


def _spec_key(spec: NationalSpec) -> str:
    payload = json.dumps({"version": GENERATOR_VERSION, "spec": asdict(spec)}, sort_keys=True)
    return f"v{GENERATOR_VERSION}-{hashlib.sha256(payload.encode()).hexdigest()[:10]}"


def archive_dir(base: Path, spec: NationalSpec) -> Path:
    return Path(base) / _spec_key(spec)


# --- geometry helpers ------------------------------------------------------------------------


@lru_cache(maxsize=32)
def _transformer(src: int, dst: int):
    from pyproj import Transformer

    return Transformer.from_crs(src, dst, always_xy=True)


def _densify(geom, step: float):
    """Vertices added so that no edge is longer than ``step`` (shapely 1.8 has no segmentize)."""
    from shapely.geometry import MultiPolygon, Polygon

    def ring(coords):
        out = []
        for (x0, y0), (x1, y1) in zip(coords[:-1], coords[1:]):
            n = max(1, int(math.ceil(math.hypot(x1 - x0, y1 - y0) / step)))
            out.extend((x0 + (x1 - x0) * i / n, y0 + (y1 - y0) * i / n) for i in range(n))
        out.append(coords[-1])
        return out

    if isinstance(geom, MultiPolygon):
        return MultiPolygon([_densify(g, step) for g in geom.geoms])
    if isinstance(geom, Polygon):
        return Polygon(ring(list(geom.exterior.coords)), [ring(list(r.coords)) for r in geom.interiors])
    return geom


def _to(geom, src: int, dst: int, step: float | None = None):
    from shapely.ops import transform

    if step:
        geom = _densify(geom, step)
    return transform(_transformer(src, dst).transform, geom)


@lru_cache(maxsize=1)
def land_lonlat():
    from shapely.geometry import MultiPolygon, Polygon
    from shapely.ops import unary_union

    polys = [Polygon(GREAT_BRITAIN), Polygon(NORTHERN_IRELAND)] + [Polygon(p) for p in ISLANDS]
    polys = [p if p.is_valid else p.buffer(0) for p in polys]
    merged = unary_union(polys)
    return merged if isinstance(merged, MultiPolygon) else MultiPolygon([merged])


@lru_cache(maxsize=1)
def land_27700():
    return _to(land_lonlat(), 4326, 27700, step=0.02)


@lru_cache(maxsize=4)
def land_utm(epsg: int):
    return _to(land_lonlat(), 4326, epsg, step=0.02)


def full_extent() -> tuple[float, float, float, float]:
    """The land's bounds in EPSG:27700, padded by 10 km and snapped to 20 m."""
    x0, y0, x1, y1 = land_27700().bounds
    pad = 10_000.0
    snap = lambda v, f: f(v / RES) * RES  # noqa: E731
    return (snap(x0 - pad, math.floor), snap(max(0.0, y0 - pad), math.floor), snap(x1 + pad, math.ceil),
            snap(y1 + pad, math.ceil))


def sub_extent(fraction: float) -> tuple[float, float, float, float]:
    """``fraction`` of the full extent's area: same aspect ratio, same centre, snapped to 20 m."""
    x0, y0, x1, y1 = full_extent()
    if fraction >= 1.0:
        return (x0, y0, x1, y1)
    k = math.sqrt(fraction)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    w, h = (x1 - x0) * k, (y1 - y0) * k
    snap = lambda v: round(v / RES) * RES  # noqa: E731
    return (snap(cx - w / 2), snap(cy - h / 2), snap(cx + w / 2), snap(cy + h / 2))


# --- MGRS-like tiles -------------------------------------------------------------------------

_COL_LETTERS = {0: "STUVWXYZ", 1: "ABCDEFGH", 2: "JKLMNPQR"}  # by zone % 3
_ROW_LETTERS = "ABCDEFGHJKLMNPQRSTUV"
_BANDS = "CDEFGHJKLMNPQRSTUVWX"


@dataclass(frozen=True)
class Tile:
    zone: int
    code: str  # e.g. 30UXC
    x0: float  # north-west corner in the zone's UTM (metres)
    y0: float

    @property
    def epsg(self) -> int:
        return 32600 + self.zone

    def transform(self):
        from rasterio.transform import Affine

        return Affine(RES, 0.0, self.x0, 0.0, -RES, self.y0)

    def polygon_utm(self):
        from shapely.geometry import box

        return box(self.x0, self.y0 - TILE_M, self.x0 + TILE_M, self.y0)

    def polygon_27700(self):
        return _tile_polygon_27700(self)


@lru_cache(maxsize=512)
def _tile_polygon_27700(tile: Tile):
    return _to(tile.polygon_utm(), tile.epsg, 27700, step=2000.0)


def _mgrs_code(zone: int, easting: float, northing: float, epsg: int) -> str:
    e = int(easting // 100_000)
    n = int(northing // 100_000)
    col = _COL_LETTERS[zone % 3][e - 1]
    row = _ROW_LETTERS[(n + (5 if zone % 2 == 0 else 0)) % 20]
    lon, lat = _transformer(epsg, 4326).transform(easting + 50_000, northing + 50_000)
    band = _BANDS[int((lat + 80) // 8)]
    return f"{zone}{band}{col}{row}"


@lru_cache(maxsize=1)
def tiles() -> tuple[Tile, ...]:
    """The MGRS-like tiles of UTM zones 29–31: 100 km squares of the zone whose 109.8 km tile meets the land."""
    from shapely.geometry import box

    out = []
    for zone in (29, 30, 31):
        epsg = 32600 + zone
        lon0 = -180 + 6 * (zone - 1)
        strip = _to(box(lon0, 48.0, lon0 + 6, 62.0), 4326, epsg, step=0.05)
        land = land_utm(epsg)
        for e in range(1, 9):
            for n in range(53, 69):
                square = box(e * 100_000, n * 100_000, (e + 1) * 100_000, (n + 1) * 100_000)
                tile = Tile(zone, _mgrs_code(zone, e * 100_000, n * 100_000, epsg), e * 100_000.0, (n + 1) * 100_000.0)
                if square.intersects(strip) and tile.polygon_utm().intersection(land).area > 0:
                    out.append(tile)
    return tuple(out)


# --- orbits and datatakes --------------------------------------------------------------------


@dataclass(frozen=True)
class Track:
    k: int  # west to east
    orbit: int  # relative orbit number
    centre_x: float  # EPSG:27700 x of the ground track at y = 600 km


@dataclass(frozen=True)
class Datatake:
    satellite: str  # S2A / S2B
    track: Track
    start: datetime
    absolute_orbit: int

    @property
    def datatake_id(self) -> str:
        return f"G{self.satellite}_{self.start:%Y%m%dT%H%M%S}_{self.absolute_orbit:06d}_N05.11"


Y_REF = 600_000.0


def swath_polygon(spec: NationalSpec, track: Track):
    """The swath in EPSG:27700: a band 290 km wide around the tilted ground track."""
    from shapely.geometry import Polygon

    t = math.tan(math.radians(spec.track_tilt_deg))
    half = spec.swath_km * 1000 / 2 / math.cos(math.radians(spec.track_tilt_deg))
    ya, yb = -400_000.0, 1_600_000.0
    xa, xb = track.centre_x + t * (ya - Y_REF), track.centre_x + t * (yb - Y_REF)
    return Polygon([(xa - half, ya), (xb - half, yb), (xb + half, yb), (xa + half, ya)])


@lru_cache(maxsize=4)
def tracks(spec: NationalSpec) -> tuple[Track, ...]:
    """Tracks whose swath meets at least one tile."""
    all_tiles = tiles()
    out = []
    for k in range(-8, 9):
        x = spec.reference_track_x_km * 1000 + k * spec.track_spacing_km * 1000
        orbit = (spec.reference_orbit - 1 + k * spec.orbit_step) % 143 + 1
        track = Track(k, orbit, x)
        swath = swath_polygon(spec, track)
        if any(swath.intersects(t.polygon_27700()) for t in all_tiles):
            out.append(track)
    # renumber west to east from 0
    return tuple(Track(i, t.orbit, t.centre_x) for i, t in enumerate(sorted(out, key=lambda t: t.centre_x)))


ORBIT_DAYS = 10.0 / 143.0
ABS_ORBIT_2024 = {"S2A": 44_300, "S2B": 35_720}  # about where the counters stood on 1 January 2024


def datatakes(spec: NationalSpec) -> list[Datatake]:
    t0 = datetime(spec.year, 1, 1, tzinfo=timezone.utc)
    t1 = datetime(spec.year + 1, 1, 1, tzinfo=timezone.utc)
    out = []
    for track in tracks(spec):
        phase = (track.orbit * 10.0 / 143.0) % 10.0  # days into each 10-day cycle
        for sat, offset in (("S2A", 0.0), ("S2B", 5.0)):
            day = (phase + offset) % 10.0
            while True:
                date = t0 + timedelta(days=math.floor(day))
                if date >= t1:
                    break
                start = date + timedelta(hours=11, minutes=2 + 4 * track.k, seconds=(track.orbit * 7) % 60)
                absolute = ABS_ORBIT_2024[sat] + int(round((start - t0).total_seconds() / 86400.0 / ORBIT_DAYS))
                out.append(Datatake(sat, track, start, absolute))
                day += 10.0
    out.sort(key=lambda d: d.start)
    return out


# --- which tile sees what --------------------------------------------------------------------


@lru_cache(maxsize=2048)
def _coverage(spec: NationalSpec, tile: Tile, track: Track) -> tuple[float, object]:
    """(share of the tile inside the swath, footprint in EPSG:27700)."""
    poly = tile.polygon_27700()
    footprint = poly.intersection(swath_polygon(spec, track))
    return footprint.area / poly.area, footprint


@lru_cache(maxsize=256)
def land_share(tile: Tile) -> float:
    poly = tile.polygon_27700()
    return poly.intersection(land_27700()).area / poly.area


def _pattern_for(spec: NationalSpec, tile: Tile, d: Datatake, share: float) -> tuple[str, float]:
    """(pattern name, its cloud cover) of one item: a hash of the datatake and tile picks it."""
    h = zlib.crc32(f"{d.datatake_id}|{tile.code}".encode())
    if share > 0.999:
        i = h % spec.full_patterns
        return f"f{i}", spec.full_cloud_cover[i % len(spec.full_cloud_cover)]
    i = h % spec.partial_patterns
    return f"p{d.track.orbit:03d}-{i}", _partial_cover(i)


def _partial_cover(i: int) -> float:
    return (0.25, 0.7, 0.5, 0.1)[i % 4]


def patterns_of(spec: NationalSpec, tile: Tile) -> list[tuple[str, float, Track | None]]:
    out = [(f"f{i}", spec.full_cloud_cover[i % len(spec.full_cloud_cover)], None) for i in range(spec.full_patterns)]
    for track in tracks(spec):
        share, _ = _coverage(spec, tile, track)
        if spec.min_tile_share <= share <= 0.999:
            out += [(f"p{track.orbit:03d}-{i}", _partial_cover(i), track) for i in range(spec.partial_patterns)]
    return out


# --- items -----------------------------------------------------------------------------------

_OTHER_ASSETS = [  # (key, file, title, gsd, common name / band, dtype, roles)
    ("red", "B04.tif", "Red - 10m", 10, "B04", "uint16", ["data", "reflectance"]),
    ("green", "B03.tif", "Green - 10m", 10, "B03", "uint16", ["data", "reflectance"]),
    ("blue", "B02.tif", "Blue - 10m", 10, "B02", "uint16", ["data", "reflectance"]),
    ("visual", "TCI.tif", "True color image", 10, None, "uint8", ["visual"]),
    ("nir", "B08.tif", "NIR 1 - 10m", 10, "B08", "uint16", ["data", "reflectance"]),
    ("swir22", "B12.tif", "SWIR 2.2μm - 20m", 20, "B12", "uint16", ["data", "reflectance"]),
    ("rededge2", "B06.tif", "Red Edge 2 - 20m", 20, "B06", "uint16", ["data", "reflectance"]),
    ("rededge3", "B07.tif", "Red Edge 3 - 20m", 20, "B07", "uint16", ["data", "reflectance"]),
    ("rededge1", "B05.tif", "Red Edge 1 - 20m", 20, "B05", "uint16", ["data", "reflectance"]),
    ("swir16", "B11.tif", "SWIR 1.6μm - 20m", 20, "B11", "uint16", ["data", "reflectance"]),
    ("wvp", "WVP.tif", "Water Vapour (WVP)", 20, None, "uint16", ["data"]),
    ("nir08", "B8A.tif", "NIR 2 - 20m", 20, "B8A", "uint16", ["data", "reflectance"]),
    ("aot", "AOT.tif", "Aerosol optical thickness (AOT)", 20, None, "uint16", ["data"]),
    ("coastal", "B01.tif", "Coastal - 60m", 60, "B01", "uint16", ["data", "reflectance"]),
    ("nir09", "B09.tif", "NIR 3 - 60m", 60, "B09", "uint16", ["data", "reflectance"]),
    ("snow", "SNW_20m.tif", "Snow Probabilities", 20, None, "uint8", ["data", "snow-ice"]),
]
_WAVELENGTHS = {"B01": (0.443, 0.027), "B02": (0.49, 0.098), "B03": (0.56, 0.045), "B04": (0.665, 0.038),
                "B05": (0.704, 0.019), "B06": (0.74, 0.018), "B07": (0.783, 0.028), "B08": (0.842, 0.145),
                "B8A": (0.865, 0.033), "B09": (0.945, 0.026), "B11": (1.61, 0.143), "B12": (2.19, 0.242)}


def item_folder(tile: Tile, d: Datatake, item_id: str) -> str:
    return f"{COLLECTION}/{tile.zone}/{tile.code[2]}/{tile.code[3:]}/{d.start.year}/{d.start.month}/{item_id}"


def _checksum(text: str) -> str:
    return "1220" + hashlib.sha256(text.encode()).hexdigest()


def make_item(spec: NationalSpec, tile: Tile, d: Datatake, share: float, footprint_27700) -> tuple[dict, str]:
    """(Collection-1 item, pattern name) of one tile of one datatake."""
    from shapely.geometry import mapping

    pattern, cover = _pattern_for(spec, tile, d, share)
    # tiles further north are sensed first on a descending pass (~7 km/s)
    ty = tile.polygon_27700().centroid.y
    when = d.start + timedelta(seconds=(1_300_000.0 - ty) / 7000.0)
    generated = d.start + timedelta(hours=1, minutes=40)
    item_id = f"{d.satellite}_T{tile.code}_{d.start:%Y%m%dT%H%M%S}_L2A"
    folder = item_folder(tile, d, item_id)
    base_url = "https://e84-earth-search-sentinel-data.s3.us-west-2.amazonaws.com/" + folder
    tr20 = [RES, 0.0, tile.x0, 0.0, -RES, tile.y0]
    geom = _to(footprint_27700.simplify(200.0), 27700, 4326)
    land = land_share(tile)
    nodata_pct = round(100.0 * (1.0 - share * land), 6)  # the sea is no data here
    assets = {}
    for key, file, title, gsd, band, dtype, roles in _OTHER_ASSETS:
        px = int(TILE_M / gsd)
        asset = {"href": f"{base_url}/{file}", "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                 "title": title}
        if band:
            wl, fw = _WAVELENGTHS[band]
            asset["eo:bands"] = [{"name": band, "common_name": key, "center_wavelength": wl, "full_width_half_max": fw}]
        asset.update({"gsd": gsd, "proj:shape": [px, px], "proj:transform": [gsd, 0, tile.x0, 0, -gsd, tile.y0],
                      "raster:bands": [{"nodata": 0, "data_type": dtype, "spatial_resolution": gsd}
                                       | ({"scale": 0.0001, "offset": -0.1} if dtype == "uint16" and band else {})],
                      "file:checksum": _checksum(item_id + file), "file:size": 1_000_000 + zlib.crc32((item_id + file).encode()) % 20_000_000,
                      "roles": roles})
        assets[key] = asset
    for key, file, title, roles in (("scl", "SCL.tif", "Scene classification map (SCL)", ["data"]),
                                    ("cloud", "CLD_20m.tif", "Cloud Probabilities", ["data", "cloud"])):
        assets[key] = {"href": f"{folder}/{file}", "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                       "title": title, "gsd": 20, "proj:shape": [TILE_PX, TILE_PX], "proj:transform": tr20,
                       "raster:bands": [{"nodata": 0, "data_type": "uint8", "spatial_resolution": 20}],
                       "file:checksum": _checksum(item_id + file), "roles": roles}
    for key, file, title in (("preview", "L2A_PVI.tif", "True color preview"),
                             ("granule_metadata", "metadata.xml", "Granule metadata"),
                             ("tileinfo_metadata", "tileInfo.json", "Tile info"),
                             ("product_metadata", "product_metadata.xml", "Product metadata"),
                             ("thumbnail", "L2A_PVI.jpg", "Thumbnail image")):
        assets[key] = {"href": f"{base_url}/{file}", "type": "application/xml" if file.endswith("xml") else "image/jpeg",
                       "title": title, "roles": ["metadata"] if "metadata" in key else ["thumbnail"]}
    yday = d.start.timetuple().tm_yday
    cx, cy = geom.centroid.x, geom.centroid.y
    props = {
        "created": (generated + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
        "platform": "sentinel-2a" if d.satellite == "S2A" else "sentinel-2b",
        "constellation": "sentinel-2", "instruments": ["msi"],
        "eo:cloud_cover": round(100.0 * cover, 6),
        "proj:epsg": tile.epsg, "proj:code": f"EPSG:{tile.epsg}",
        "proj:centroid": {"lat": round(cy, 5), "lon": round(cx, 5)},
        "mgrs:utm_zone": tile.zone, "mgrs:latitude_band": tile.code[2], "mgrs:grid_square": tile.code[3:],
        "grid:code": f"MGRS-{tile.code}",
        "view:azimuth": 100.0 + (yday % 50), "view:incidence_angle": 3.0 + (yday % 7),
        "view:sun_azimuth": 160.0 + (yday % 30), "view:sun_elevation": 15.0 + 47.0 * math.sin(math.pi * yday / 366),
        "s2:tile_id": f"{d.satellite}_OPER_MSI_L2A_TL_2{d.satellite[2]}PS_{generated:%Y%m%dT%H%M%S}_A{d.absolute_orbit:06d}_T{tile.code}_N05.11",
        "s2:degraded_msi_data_percentage": 0, "s2:nodata_pixel_percentage": nodata_pct,
        "s2:saturated_defective_pixel_percentage": 0, "s2:dark_features_percentage": round(1.0 * (1 - cover), 6),
        "s2:cloud_shadow_percentage": round(5.0 * cover, 6), "s2:vegetation_percentage": round(68.0 * (1 - cover), 6),
        "s2:not_vegetated_percentage": round(20.0 * (1 - cover), 6), "s2:water_percentage": round(4.0 * (1 - cover), 6),
        "s2:unclassified_percentage": round(2.0 * (1 - cover), 6),
        "s2:medium_proba_clouds_percentage": round(35.0 * cover, 6), "s2:high_proba_clouds_percentage": round(55.0 * cover, 6),
        "s2:thin_cirrus_percentage": round(10.0 * cover, 6), "s2:snow_ice_percentage": 0,
        "s2:product_type": "S2MSI2A", "s2:processing_baseline": "05.11",
        "s2:product_uri": f"{d.satellite}_MSIL2A_{d.start:%Y%m%dT%H%M%S}_N0511_R{d.track.orbit:03d}_T{tile.code}_{generated:%Y%m%dT%H%M%S}.SAFE",
        "s2:generation_time": generated.strftime("%Y-%m-%dT%H:%M:%S.000000Z"),
        "s2:datatake_id": d.datatake_id, "s2:datatake_type": "INS-NOBS",
        "s2:datastrip_id": f"{d.satellite}_OPER_MSI_L2A_DS_2{d.satellite[2]}PS_{generated:%Y%m%dT%H%M%S}_S{d.start:%Y%m%dT%H%M%S}_N05.11",
        "s2:reflectance_conversion_factor": round(1 + 0.0334 * math.cos(2 * math.pi * (yday - 4) / 365.25), 9),
        "sat:relative_orbit": d.track.orbit,
        "datetime": when.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
        "earthsearch:payload_id": f"roda-sentinel-2-c1-l2a/workflow-sentinel-2-c1-l2a-to-stac/{hashlib.md5(item_id.encode()).hexdigest()}",
        "storage:platform": "AWS", "storage:region": "us-west-2", "storage:requester_pays": False,
        "processing:software": {"sentinel-2-c1-l2a-to-stac": "v2024.02.01"},
        "updated": (generated + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
    }
    api = "https://earth-search.aws.element84.com/v1"
    links = [
        {"rel": "self", "type": "application/geo+json", "href": f"{api}/collections/{COLLECTION}/items/{item_id}"},
        {"rel": "canonical", "href": f"s3://e84-earth-search-sentinel-data/{folder}/{item_id}.json", "type": "application/json"},
        {"rel": "via", "href": f"s3://sentinel-s2-l2a/tiles/{tile.zone}/{tile.code[2]}/{tile.code[3:]}/{d.start:%Y/%-m/%-d}/0/metadata.xml",
         "type": "application/xml", "title": "Granule Metadata in Sinergize RODA Archive"},
        {"rel": "parent", "type": "application/json", "href": f"{api}/collections/{COLLECTION}"},
        {"rel": "collection", "type": "application/json", "href": f"{api}/collections/{COLLECTION}"},
        {"rel": "root", "type": "application/json", "href": api},
        {"rel": "thumbnail", "href": f"{api}/collections/{COLLECTION}/items/{item_id}/thumbnail"},
    ]
    item = {
        "type": "Feature", "stac_version": "1.0.0", "id": item_id, "properties": props,
        "geometry": mapping(geom), "links": links, "assets": assets,
        "bbox": [round(v, 9) for v in geom.bounds], "collection": COLLECTION,
        "stac_extensions": [
            "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
            "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
            "https://stac-extensions.github.io/mgrs/v1.0.0/schema.json",
            "https://stac-extensions.github.io/grid/v1.0.0/schema.json",
            "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
            "https://stac-extensions.github.io/view/v1.0.0/schema.json",
            "https://stac-extensions.github.io/file/v2.1.0/schema.json",
            "https://stac-extensions.github.io/storage/v1.0.0/schema.json",
            "https://stac-extensions.github.io/processing/v1.1.0/schema.json",
        ],
    }
    return item, pattern


def catalogue(spec: NationalSpec):
    """Every (item, tile, pattern, footprint in EPSG:27700) of the year."""
    all_tiles = tiles()
    for d in datatakes(spec):
        for tile in all_tiles:
            share, footprint = _coverage(spec, tile, d.track)
            if share < spec.min_tile_share:
                continue
            item, pattern = make_item(spec, tile, d, share, footprint)
            yield item, tile, pattern, footprint


# --- pixels ----------------------------------------------------------------------------------


def _smooth_noise(rng, shape: tuple[int, int], sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    f = gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    f /= max(1e-6, float(f.std()))
    return f


def _upsample(a: np.ndarray, factor: int, out: int) -> np.ndarray:
    """Bilinear-ish upsampling of a coarse field to ``out`` × ``out`` (separable linear)."""
    n = a.shape[0]
    pos = (np.arange(out, dtype=np.float32) + 0.5) / factor - 0.5
    i = np.clip(np.floor(pos).astype(np.int64), 0, n - 2)
    f = np.clip(pos - i, 0.0, 1.0).astype(np.float32)
    rows = a[i] * (1 - f)[:, None] + a[i + 1] * f[:, None]
    return rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]


def _rasterize(geom, tile: Tile) -> np.ndarray:
    from rasterio.features import rasterize

    if geom.is_empty:
        return np.zeros((TILE_PX, TILE_PX), bool)
    return rasterize([(geom, 1)], out_shape=(TILE_PX, TILE_PX), transform=tile.transform(), fill=0, dtype="uint8").astype(bool)


def _land_cover(rng, land: np.ndarray) -> np.ndarray:
    """SCL of a clear day: vegetation, not vegetated (towns, bare fields), water, dark, unclassified."""
    half = TILE_PX // 2 + 1
    fields = _smooth_noise(rng, (half, half), 2.0)
    towns = _smooth_noise(rng, (half // 8, half // 8), 3.0)
    towns = _upsample(towns, 8, half)
    scl = np.full((half, half), 4, np.uint8)
    scl[fields + 0.8 * towns > 1.25] = 5
    scl[_upsample(_smooth_noise(rng, (half // 4, half // 4), 2.0), 4, half) > 2.4] = 6  # lakes
    scl = np.repeat(np.repeat(scl, 2, axis=0), 2, axis=1)[:TILE_PX, :TILE_PX]
    speckle = rng.random((TILE_PX, TILE_PX), dtype=np.float32)
    scl[speckle < 0.004] = 7
    scl[(speckle >= 0.004) & (speckle < 0.006)] = 2
    scl[~land] = 0
    return scl


def render_pattern(rng, base_scl: np.ndarray, land: np.ndarray, cover: float, swath: np.ndarray | None):
    """(SCL, CLD) of one pattern: clouds covering about ``cover`` of the tile."""
    coarse = 688  # 8 px → 160 m lattice
    g = _smooth_noise(rng, (coarse, coarse), 6.0) + 0.35 * _smooth_noise(rng, (coarse, coarse), 1.5)
    g = _upsample(g, 8, TILE_PX)
    thr = float(np.quantile(g[::16, ::16], 1.0 - cover))
    # Sen2Cor-like probability: a logistic of the field around the threshold, smooth under clouds
    with np.errstate(over="ignore"):
        prob = 100.0 / (1.0 + np.exp(-(g - thr) * 20.0))
    # a little pixel noise under clouds; clear land is 0 as Sen2Cor's mostly is
    noisy = (prob > 20.0) & (prob < 97.0)
    prob[noisy] += rng.standard_normal(int(noisy.sum()), dtype=np.float32) * 0.35
    prob[prob < 4.0] = 0.0
    np.clip(prob, 0, 100, out=prob)
    cld = np.rint(prob).astype(np.uint8)
    scl = base_scl.copy()
    scl[cld >= 35] = 8
    scl[cld >= 65] = 9
    cirrus = (cld >= 12) & (cld < 35)
    scl[cirrus & (g > thr - 0.35)] = 10
    shadow = np.zeros_like(land)
    shift = 60  # 1.2 km
    shadow[shift:, :-shift] = cld[:-shift, shift:] >= 50
    scl[shadow & (cld < 12) & (scl != 0)] = 3
    nodata = ~land if swath is None else (~land | ~swath)
    scl[nodata] = 0
    cld[nodata] = 0
    return scl, cld


def _write_cog(path: Path, array: np.ndarray, tile: Tile, blocksize: int) -> None:
    import rasterio

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + f".part-{os.getpid()}.tif")
    with rasterio.open(tmp, "w", driver="COG", width=TILE_PX, height=TILE_PX, count=1, dtype="uint8",
                       crs=f"EPSG:{tile.epsg}", transform=tile.transform(), nodata=0, compress="DEFLATE",
                       blocksize=blocksize, overview_resampling="NEAREST", overviews="AUTO", BIGTIFF="NO") as dst:
        dst.write(array[None])
    os.replace(tmp, path)


def render_tile(args) -> dict:
    """Every pattern of one tile (a worker process's task)."""
    spec, tile, root = args
    root = Path(root)
    folder = root / "pool" / tile.code
    done = folder / "done.json"
    if done.exists():
        return json.loads(done.read_text())
    t0 = time.monotonic()
    rng = np.random.default_rng([spec.seed, zlib.crc32(tile.code.encode())])
    land = _rasterize(land_utm(tile.epsg).intersection(tile.polygon_utm()), tile)
    base = _land_cover(rng, land)
    sizes = {}
    for name, cover, track in patterns_of(spec, tile):
        swath = None
        if track is not None:
            swath = _rasterize(_to(swath_polygon(spec, track), 27700, tile.epsg, step=5000.0).intersection(tile.polygon_utm()), tile)
        scl, cld = render_pattern(rng, base, land, cover, swath)
        _write_cog(folder / name / "SCL.tif", scl, tile, spec.blocksize)
        _write_cog(folder / name / "CLD_20m.tif", cld, tile, spec.blocksize)
        sizes[name] = [(folder / name / "SCL.tif").stat().st_size, (folder / name / "CLD_20m.tif").stat().st_size]
    info = {"tile": tile.code, "seconds": round(time.monotonic() - t0, 1), "land_pct": round(100 * float(land.mean()), 2),
            "sizes": sizes}
    done.write_text(json.dumps(info))
    return info


# --- zones -----------------------------------------------------------------------------------


def make_zones(spec: NationalSpec, path: Path) -> Path:
    """``n_zones`` Voronoi small areas over the land (EPSG:27700), field ``code``."""
    if path.exists():
        return path
    import geopandas as gpd
    from shapely.geometry import MultiPoint, box
    from shapely.ops import voronoi_diagram
    from shapely.prepared import prep
    from shapely.vectorized import contains

    rng = np.random.default_rng(spec.seed + 1)
    land = land_27700()
    land_p = prep(land)
    x0, y0, x1, y1 = land.bounds
    n = spec.n_zones
    n_city = int(0.3 * n)
    points = []
    while sum(len(p) for p in points) < n - n_city:
        xy = np.column_stack([rng.uniform(x0, x1, 200_000), rng.uniform(y0, y1, 200_000)])
        points.append(xy[contains(land, xy[:, 0], xy[:, 1])])
    uniform = np.concatenate(points)[: n - n_city]
    cities = np.array([(*_transformer(4326, 27700).transform(lon, lat), w) for lon, lat, w in CITIES])
    weights = cities[:, 2] / cities[:, 2].sum()
    got = []
    while sum(len(p) for p in got) < n_city:
        which = rng.choice(len(cities), 50_000, p=weights)
        sigma = 4_000.0 * np.sqrt(cities[which, 2])
        xy = cities[which, :2] + rng.standard_normal((50_000, 2)) * sigma[:, None]
        got.append(xy[contains(land, xy[:, 0], xy[:, 1])])
    seeds = np.concatenate([uniform, np.concatenate(got)[:n_city]])
    envelope = box(x0 - 50_000, y0 - 50_000, x1 + 50_000, y1 + 50_000)
    cells = []
    for cell in voronoi_diagram(MultiPoint([tuple(p) for p in seeds]), envelope=envelope).geoms:
        if not land_p.contains(cell):
            cell = cell.intersection(land)
        if not cell.is_empty and cell.area > 0:
            cells.append(cell)
    cx = np.array([c.centroid.x for c in cells])
    cy = np.array([c.centroid.y for c in cells])
    # rough nations for LSOA-like codes: NI west of the Irish Sea, Scotland north of the border
    nation = np.where((cx < 200_000) & (cy > 450_000) & (cy < 650_000), "N00",
                      np.where(cy > 560_000 + 0.25 * (cx - 300_000), "S01",
                               np.where((cx < 340_000) & (cy < 400_000) & (cy > 160_000), "W01", "E01")))
    codes = [f"{p}{i + 1:06d}" for i, p in enumerate(nation)]
    tmp = path.with_name(path.stem + ".part.gpkg")
    if tmp.exists():
        tmp.unlink()
    gpd.GeoDataFrame({"code": codes}, geometry=cells, crs="EPSG:27700").to_file(tmp, layer="zones", driver="GPKG")
    os.replace(tmp, path)
    return path


# --- the archive -----------------------------------------------------------------------------


def _ensure_catalogue(spec: NationalSpec, root: Path) -> Path:
    """items.ndjson (relative hrefs) and index.json (per item: tile, pattern, footprint bounds)."""
    items_path = root / "items.ndjson"
    index_path = root / "index.json"
    if items_path.exists() and index_path.exists():
        return items_path
    root.mkdir(parents=True, exist_ok=True)
    index = []
    tmp = items_path.with_suffix(".part")
    with open(tmp, "w") as fh:
        for item, tile, pattern, footprint in catalogue(spec):
            fh.write(json.dumps(item, separators=(",", ":")) + "\n")
            index.append([item["id"], tile.code, pattern, item["properties"]["sat:relative_orbit"]])
    os.replace(tmp, items_path)
    index_path.write_text(json.dumps(index))
    return items_path


def fraction_label(fraction: float) -> str:
    if fraction >= 1:
        return "1"
    inv = 1.0 / fraction
    return f"1/{int(round(inv))}" if abs(inv - round(inv)) < 1e-9 else f"{fraction:g}"


def prepare(fraction: float, base: Path, spec: NationalSpec | None = None, workers: int = 2, log=print) -> dict:
    """The archive's part for ``fraction``: tiles rendered, links made, items and zones selected.

    Returns paths (root, items — relative hrefs, zones) and the figures of the selection."""
    import geopandas as gpd
    from shapely.geometry import box

    spec = spec or NationalSpec()
    root = archive_dir(base, spec)
    root.mkdir(parents=True, exist_ok=True)
    (root / "spec.json").write_text(json.dumps({"version": GENERATOR_VERSION, "spec": asdict(spec)}, indent=1))
    label = fraction_label(fraction).replace("/", "-")
    sel = root / "fractions" / label
    meta_path = sel / "selection.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if all((root / "pool" / t / "done.json").exists() for t in meta["tiles"]):
            return meta
    t0 = time.monotonic()
    _ensure_catalogue(spec, root)
    index = json.loads((root / "index.json").read_text())
    extent = sub_extent(fraction)
    area = box(*extent)
    by_code = {t.code: t for t in tiles()}
    by_orbit = {t.orbit: t for t in tracks(spec)}
    chosen = []
    for item_id, code, pattern, orbit in index:
        # the item's footprint (its tile inside its swath, EPSG:27700) meets the extent
        if _coverage(spec, by_code[code], by_orbit[orbit])[1].intersects(area):
            chosen.append((item_id, code, pattern))
    need = sorted({code for _, code, _ in chosen})
    log(f"  fraction {fraction_label(fraction)}: extent {[round(v / 1000, 1) for v in extent]} km, "
        f"{len(chosen)} items over {len(need)} tiles")
    todo = [by_code[c] for c in need if not (root / "pool" / c / "done.json").exists()]
    if todo:
        log(f"  rendering {len(todo)} tiles' pattern pools with {workers} processes …")
        t1 = time.monotonic()
        args = [(spec, t, str(root)) for t in todo]
        if workers > 1:
            import multiprocessing as mp

            with mp.get_context("fork").Pool(workers) as pool:
                for k, info in enumerate(pool.imap_unordered(render_tile, args), start=1):
                    log(f"    {k}/{len(todo)} {info['tile']}: {info['seconds']} s, land {info['land_pct']} %, "
                        f"{sum(sum(v) for v in info['sizes'].values()) / 1e6:.0f} MB")
        else:
            for info in map(render_tile, args):
                log(f"    {info['tile']}: {info['seconds']} s")
        log(f"  rendered in {time.monotonic() - t1:.0f} s")
    # the selection's items, and each its own SCL.tif / CLD_20m.tif: a link into the pool
    where = {item_id: (code, pattern) for item_id, code, pattern in chosen}
    sel.mkdir(parents=True, exist_ok=True)
    items_out = sel / "items.ndjson"
    n_items = 0
    takes = set()
    with open(root / "items.ndjson") as src, open(items_out.with_suffix(".part"), "w") as dst:
        for line in src:
            item = json.loads(line)
            if item["id"] not in where:
                continue
            dst.write(line)
            n_items += 1
            takes.add(item["properties"]["s2:datatake_id"])
            code, pattern = where[item["id"]]
            for key in ("scl", "cloud"):
                href = item["assets"][key]["href"]
                link = root / href
                target = root / "pool" / code / pattern / Path(href).name
                if not link.is_symlink():
                    link.parent.mkdir(parents=True, exist_ok=True)
                    link.symlink_to(os.path.relpath(target, link.parent))
    os.replace(items_out.with_suffix(".part"), items_out)
    # the zones meeting the extent, clipped to it
    zones_all = make_zones(spec, root / "zones.gpkg")
    zones_path = sel / "zones.gpkg"
    zones = gpd.read_file(zones_all, layer="zones")
    inside = zones[zones.intersects(area)].copy()
    inside["geometry"] = [g if area.contains(g) else g.intersection(area) for g in inside.geometry]
    inside = inside[~inside.geometry.is_empty & (inside.geometry.area > 0)]
    if zones_path.exists():
        zones_path.unlink()
    inside.to_file(zones_path, layer="zones", driver="GPKG")
    land_px = area.intersection(land_27700()).area / (RES * RES)
    pool_bytes = sum(f.stat().st_size for code in need for f in (root / "pool" / code).rglob("*.tif"))
    meta = {
        "fraction": fraction, "label": fraction_label(fraction), "extent_27700": list(extent),
        "grid_shape": [int(round((extent[3] - extent[1]) / RES)), int(round((extent[2] - extent[0]) / RES))],
        "land_pixels": int(land_px), "items": n_items, "datatakes": len(takes), "tiles": need,
        "zones": int(len(inside)), "pool_bytes": pool_bytes,
        "root": str(root), "items_path": str(items_out), "zones_path": str(zones_path),
        "seconds": round(time.monotonic() - t0, 1),
    }
    meta_path.write_text(json.dumps(meta, indent=1))
    return meta


def describe(spec: NationalSpec | None = None) -> dict:
    """Counts of the whole year without rendering anything."""
    spec = spec or NationalSpec()
    all_tiles = tiles()
    dts = datatakes(spec)
    n_items = 0
    partial = 0
    per_tile: dict[str, int] = {}
    for d in dts:
        for t in all_tiles:
            share, _ = _coverage(spec, t, d.track)
            if share >= spec.min_tile_share:
                n_items += 1
                partial += share <= 0.999
                per_tile[t.code] = per_tile.get(t.code, 0) + 1
    n_patterns = sum(len(patterns_of(spec, t)) for t in all_tiles)
    return {"tiles": len(all_tiles), "tracks": [(t.orbit, round(t.centre_x / 1000)) for t in tracks(spec)],
            "datatakes": len(dts), "items": n_items, "partial_items": partial, "patterns": n_patterns,
            "extent_km": [round(v / 1000, 1) for v in full_extent()],
            "items_per_tile": [min(per_tile.values()), max(per_tile.values())]}


if __name__ == "__main__":
    print(json.dumps(describe(), indent=1))


def allow_loopback_assets() -> None:
    """The year's items are Earth Search's (their links say so), their COGs served on loopback:
    core refuses assets a web catalogue places on this machine (issue 14) unless told otherwise,
    as a user would tell it, with ``CLOUDPROB_ALLOW_LOCAL_ASSETS``. Set before any worker starts."""
    import os

    os.environ["CLOUDPROB_ALLOW_LOCAL_ASSETS"] = "YES"
