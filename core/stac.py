"""One normaliser for Sentinel-2 STAC items from every catalogue this plugin reads.

Earth Search v1 (``sentinel-2-l2a``: assets ``scl``, ``red``…, properties ``s2:*``,
``mgrs:*``, ``grid:code``, ``proj:epsg``), its pre-release payloads (``sentinel2:*``),
Earth Search v0 (``sentinel-s2-l2a-cogs``: assets ``SCL``, ``B04``…, ``sentinel:*``) and
Planetary Computer (``sentinel-2-l2a``: ``SCL``, ``B04``, ``s2:mgrs_tile``,
``sat:relative_orbit``, no ``cloud`` asset, hrefs on Azure blobs read with SAS tokens, see
:mod:`core.planetary`) name the same things differently. Every later stage reads a
:class:`Scene`, never raw item JSON, so the differences live here and nowhere else.
"""
from __future__ import annotations

import functools
import json
import re
import zlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Mapping

from .catalogue import Href, catalogue_of
from .dates import parse_datetime  # noqa: F401 (the STAC model's datetimes; read from here by callers)

# Canonical asset names are Earth Search v1's; band codes (v0, Planetary Computer) map onto them.
BAND_CODE_TO_ASSET = {
    "B01": "coastal",
    "B02": "blue",
    "B03": "green",
    "B04": "red",
    "B05": "rededge1",
    "B06": "rededge2",
    "B07": "rededge3",
    "B08": "nir",
    "B8A": "nir08",
    "B09": "nir09",
    "B10": "cirrus",
    "B11": "swir16",
    "B12": "swir22",
    "SCL": "scl",
    "AOT": "aot",
    "WVP": "wvp",
    "visual": "visual",
    "TCI": "visual",
}
ASSET_TO_BAND_CODE = {v: k for k, v in BAND_CODE_TO_ASSET.items() if k != "TCI"}

_PRODUCT_URI = re.compile(
    r"^(?P<sat>S2[ABCD])_MSI(?:L1C|L2A)_(?P<start>\d{8}T\d{6})_N(?P<baseline>\d{4})_R(?P<orbit>\d{3})_T(?P<tile>\d{2}[A-Z]{3})"
)
_DATATAKE_ID = re.compile(r"^G(?P<sat>S2[ABCD])_(?P<start>\d{8}T\d{6})_(?P<abs>\d{6})")
_ABS_ORBIT = re.compile(r"_A(?P<abs>\d{6})_")
_TILE = re.compile(r"^(\d{1,2})([C-X])([A-Z]{2})$")


class ItemError(ValueError):
    """A STAC item that is not a usable Sentinel-2 scene; the message says why."""


@dataclass(frozen=True)
class Scene:
    """One Sentinel-2 product (one STAC item), normalised.

    ``datatake_id`` is the same for every product of one acquisition: MGRS tiles of one pass,
    split datastrips and reprocessed duplicates (other processing baseline) share it, so a
    pixel's observation can be counted once.
    """

    item_id: str
    collection: str | None
    datetime: str  # ISO 8601, UTC
    platform: str  # lower case, e.g. "sentinel-2b"
    mgrs_tile: str | None  # e.g. "30UXC"
    epsg: int | None  # EPSG code of the product's grid
    relative_orbit: int | None
    scene_cloud: float | None  # eo:cloud_cover, percent of the whole product
    nodata_pct: float | None  # percent of the tile without data
    processing_baseline: str | None  # "05.10"
    datatake_id: str
    boa_offset_applied: bool | None
    assets: dict[str, str] = field(default_factory=dict)  # canonical name -> href
    geometry: dict | None = None  # GeoJSON, EPSG:4326
    bbox: tuple[float, float, float, float] | None = None
    # the whole STAC item as compact JSON, zlib-compressed: ~5 kB instead of ~60 kB of Python
    # objects for an Earth Search item (a national year holds ~13,000 scenes; Dask tasks ship them)
    item_z: bytes = field(default=b"", repr=False, compare=False)

    @property
    def item(self) -> dict:
        """The STAC item as it was read (parsed again on each call: keep the result if it is used often)."""
        return json.loads(zlib.decompress(self.item_z)) if self.item_z else {}

    @functools.cached_property
    def links(self) -> tuple[tuple[str, str], ...]:
        """(rel, href) of the item's links, kept after the first call (asked on every read)."""
        return tuple((str(link.get("rel")), link["href"]) for link in self.item.get("links") or []
                     if isinstance(link, dict) and isinstance(link.get("href"), str))

    @property
    def when(self) -> datetime:
        """Acquisition time as an aware UTC datetime."""
        return parse_datetime(self.datetime)

    def asset_href(self, name: str) -> str | None:
        """Href of a canonical asset (``scl``, ``red``…) or a band code (``SCL``, ``B04``…), as a
        :class:`core.catalogue.Href` that remembers the item's catalogue: every read checks it
        against that catalogue and signs it as that catalogue requires
        (Planetary Computer's SAS tokens), whichever stage reads it."""
        key = BAND_CODE_TO_ASSET.get(name, name)
        href = self.assets.get(key)
        if href is None:
            return None
        return Href(href, catalogue_of(self))

    def item_json(self) -> str:
        """The item as compact JSON, for storing in a layer field."""
        return zlib.decompress(self.item_z).decode() if self.item_z else "{}"


def _first(props: Mapping[str, Any], *names: str) -> Any:
    for name in names:
        value = props.get(name)
        if value not in (None, ""):
            return value
    return None


def _float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _epsg(props: Mapping[str, Any], assets: Mapping[str, Any], tile: str | None) -> int | None:
    code = _first(props, "proj:epsg")
    if code is None:
        text = _first(props, "proj:code")
        if isinstance(text, str) and text.upper().startswith("EPSG:"):
            code = text.split(":", 1)[1]
    if code is None:
        for asset in assets.values():
            code = asset.get("proj:epsg")
            if code is None and str(asset.get("proj:code", "")).upper().startswith("EPSG:"):
                code = str(asset["proj:code"]).split(":", 1)[1]
            if code is not None:
                break
    if code is None and tile:
        match = _TILE.match(tile)
        if match:
            zone, band = int(match.group(1)), match.group(2)
            code = (32600 if band >= "N" else 32700) + zone
    try:
        return None if code is None else int(code)
    except (TypeError, ValueError):
        return None


def _canonical_tile(code: str) -> str:
    """``5CNL`` → ``05CNL``: product names (``T05CNL``) pad the zone, ``grid:code`` does not."""
    code = code.strip().upper()
    match = _TILE.match(code)
    return f"{int(match.group(1)):02d}{match.group(2)}{match.group(3)}" if match and len(code) <= 5 else code


def _mgrs_tile(props: Mapping[str, Any], product_uri: str | None) -> str | None:
    grid = _first(props, "grid:code")
    if isinstance(grid, str) and grid.upper().startswith("MGRS-"):
        return _canonical_tile(grid[5:])
    tile = _first(props, "s2:mgrs_tile")
    if tile:
        return _canonical_tile(str(tile))
    for prefix in ("mgrs", "sentinel"):
        zone = props.get(f"{prefix}:utm_zone")
        band = props.get(f"{prefix}:latitude_band")
        square = props.get(f"{prefix}:grid_square")
        if zone is not None and band and square:
            return f"{int(zone):02d}{band}{square}".upper()
    if product_uri:
        match = _PRODUCT_URI.match(product_uri)
        if match:
            return match.group("tile")
    return None


def _platform(props: Mapping[str, Any], item_id: str) -> str:
    platform = _first(props, "platform")
    if platform:
        return str(platform).lower()
    match = re.match(r"^S2([ABCD])", item_id)
    return f"sentinel-2{match.group(1).lower()}" if match else "unknown"


def _datatake_id(props: Mapping[str, Any], platform: str, product_uri: str | None, when: datetime) -> str:
    """Identifier shared by every product of one acquisition.

    ``s2:datatake_id`` carries the processing baseline (``…_N05.11``), so a reprocessed
    duplicate would look like another acquisition; the satellite and the datatake's sensing
    start are what identify it.
    """
    raw = _first(props, "s2:datatake_id", "sentinel2:datatake_id")
    if isinstance(raw, str):
        match = _DATATAKE_ID.match(raw)
        if match:
            return f"{match.group('sat')}_{match.group('start')}"
    if product_uri:
        match = _PRODUCT_URI.match(product_uri)
        if match:
            return f"{match.group('sat')}_{match.group('start')}"
    sat = "S2" + platform[-1].upper() if platform.startswith("sentinel-2") else platform
    for name in ("sentinel2:id", "s2:tile_id", "s2:granule_id", "s2:datastrip_id"):
        text = props.get(name)
        if isinstance(text, str):
            match = _ABS_ORBIT.search(text + "_")
            if match:
                return f"{sat}_A{match.group('abs')}"
    # Last resort: one satellite passes over a place at most once per UTC day outside the poles.
    return f"{sat}_{when:%Y%m%d}"


def _relative_orbit(props: Mapping[str, Any], product_uri: str | None) -> int | None:
    orbit = _first(props, "sat:relative_orbit", "sentinel:relative_orbit")
    if orbit is not None:
        try:
            return int(orbit)
        except (TypeError, ValueError):
            pass
    if product_uri:
        match = _PRODUCT_URI.match(product_uri)
        if match:
            return int(match.group("orbit"))
    return None


def _baseline(props: Mapping[str, Any], product_uri: str | None) -> str | None:
    baseline = _first(props, "s2:processing_baseline", "sentinel:processing_baseline", "sentinel2:processing_baseline")
    if baseline is not None:
        return str(baseline)
    if product_uri:
        match = _PRODUCT_URI.match(product_uri)
        if match:
            digits = match.group("baseline")
            return f"{digits[:2]}.{digits[2:]}"
    return None


def _bbox2d(bbox: Any) -> tuple[float, float, float, float] | None:
    if isinstance(bbox, (list, tuple)) and len(bbox) == 4:
        return (float(bbox[0]), float(bbox[1]), float(bbox[2]), float(bbox[3]))
    if isinstance(bbox, (list, tuple)) and len(bbox) == 6:  # 3D: minx, miny, minz, maxx, maxy, maxz
        return (float(bbox[0]), float(bbox[1]), float(bbox[3]), float(bbox[4]))
    return None


def _assets(raw: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, asset in raw.items():
        href = asset.get("href") if isinstance(asset, Mapping) else None
        if not href:
            continue
        name = BAND_CODE_TO_ASSET.get(key, key)
        # Earth Search v1 also lists "-jp2" twins; the COG wins when both exist.
        if name not in out:
            out[name] = href
    return out


def normalise_item(item: Mapping[str, Any]) -> Scene:
    """Turn one STAC item (a dict, as parsed from JSON) into a :class:`Scene`.

    Raises :class:`ItemError` if the item has no id, no datetime or is not a Feature.
    """
    if not isinstance(item, Mapping) or item.get("type") != "Feature":
        raise ItemError("not a STAC item (GeoJSON Feature)")
    item_id = item.get("id")
    if not item_id:
        raise ItemError("STAC item without an id")
    props = item.get("properties") or {}
    when_text = props.get("datetime") or props.get("start_datetime")
    if not when_text:
        raise ItemError(f"STAC item {item_id} has no datetime")
    when = parse_datetime(when_text)
    product_uri = _first(props, "s2:product_uri", "sentinel:product_id")
    if isinstance(product_uri, str) and product_uri.endswith(".SAFE"):
        product_uri = product_uri[:-5]
    raw_assets = item.get("assets") or {}
    tile = _mgrs_tile(props, product_uri)
    platform = _platform(props, str(item_id))
    boa = _first(props, "earthsearch:boa_offset_applied", "sentinel:boa_offset_applied")
    bbox = item.get("bbox")
    return Scene(
        item_id=str(item_id),
        collection=item.get("collection"),
        datetime=when.isoformat().replace("+00:00", "Z"),
        platform=platform,
        mgrs_tile=tile,
        epsg=_epsg(props, raw_assets, tile),
        relative_orbit=_relative_orbit(props, product_uri),
        scene_cloud=_float(props.get("eo:cloud_cover")),
        nodata_pct=_float(_first(props, "s2:nodata_pixel_percentage", "sentinel2:nodata_pixel_percentage")),
        processing_baseline=_baseline(props, product_uri),
        datatake_id=_datatake_id(props, platform, product_uri if isinstance(product_uri, str) else None, when),
        boa_offset_applied=None if boa is None else bool(boa),
        assets=_assets(raw_assets),
        geometry=item.get("geometry"),
        bbox=_bbox2d(bbox),
        item_z=zlib.compress(json.dumps(item, separators=(",", ":")).encode(), 6),
    )


def scene_from_json(text: str) -> Scene:
    """Rebuild a :class:`Scene` from the item JSON stored in a footprints layer."""
    return normalise_item(json.loads(text))
