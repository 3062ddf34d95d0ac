"""Real Sentinel-2 data from tests/data (provenance and licences in tests/data/README.md) written
as COGs with STAC items, in the layout the loopback servers serve (items/collection.json,
items/items.json, relative hrefs).

Each archive is cached under .build in a folder named after a key: a hash of this module's
source and of the input files it reads. A change to either writes a new archive beside the old
one instead of serving the stale one. An archive is written to a temporary sibling and moved
into place when complete, so an interrupted run leaves no half-written archive behind.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_bounds

L1C_ASSETS = ["coastal", "blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "nir08", "nir09",
              "cirrus", "swir16", "swir22"]  # REFERENCE_SCENES band order B01…B12 with B8A after B08


def write_cog(path: Path, data: np.ndarray, crs: str, transform, nodata=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    bands = data[np.newaxis] if data.ndim == 2 else data
    profile = dict(driver="COG", width=bands.shape[2], height=bands.shape[1], count=bands.shape[0],
                   dtype=bands.dtype.name, crs=crs, transform=transform, compress="DEFLATE", blocksize=128)
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(bands)


def _item(item_id: str, when: datetime, epsg: int, bounds, assets: dict, baseline: str = "02.04",
          collection: str = "sentinel-2-l2a", platform: str = "sentinel-2a") -> dict:
    from pyproj import Transformer
    from shapely.geometry import box, mapping
    from shapely.ops import transform

    footprint = transform(Transformer.from_crs(epsg, 4326, always_xy=True).transform, box(*bounds))
    stamp = when.strftime("%Y%m%dT%H%M%S")
    sat = "S2" + platform[-1].upper()
    return {
        "type": "Feature", "stac_version": "1.0.0", "id": item_id, "collection": collection,
        "geometry": mapping(footprint), "bbox": list(footprint.bounds), "links": [],
        "properties": {
            "datetime": when.strftime("%Y-%m-%dT%H:%M:%S.000Z"), "platform": platform, "proj:epsg": epsg,
            "s2:processing_baseline": baseline, "s2:datatake_id": f"G{sat}_{stamp}_000000_N{baseline}",
            "eo:cloud_cover": None,
        },
        "assets": assets,
    }


def _finish(out: Path, items: list[dict], collection: str = "sentinel-2-l2a") -> Path:
    (out / "items").mkdir(parents=True, exist_ok=True)
    times = sorted(i["properties"]["datetime"] for i in items)
    (out / "items" / "collection.json").write_text(json.dumps({
        "type": "Collection", "stac_version": "1.0.0", "id": collection, "description": "real data (tests)",
        "license": "various", "links": [],
        "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]}, "temporal": {"interval": [[times[0], times[-1]]]}},
    }))
    (out / "items" / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    return out


EOLEARN = "eolearn_testeopatch"
EOLEARN_FILES = [f"{EOLEARN}/{name}" for name in ("bbox.geojson", "timestamps.json", "masks.npz", "CLP.tif")]
L1C_FILES = EOLEARN_FILES + [f"{EOLEARN}/REFERENCE_SCENES_DN.npz"]
SEN2R_SCL = ("S2A2A_20170703_022_Barbellino_SCL_10.tif", "S2A2A_20190723_022_Barbellino_SCL_10.tif")
SEN2R_FILES = [f"sen2r_barbellino/{name}" for name in SEN2R_SCL]


def cache_key(realdata: Path, inputs: list[str]) -> str:
    """A hash of this module's source and of the ``inputs`` (paths under ``realdata``), names and bytes."""
    digest = hashlib.sha256(Path(__file__).read_bytes())
    for name in sorted(inputs):
        digest.update(name.encode() + b"\0" + (realdata / name).read_bytes())
    return digest.hexdigest()[:12]


def _cached(out: Path, realdata: Path, inputs: list[str], write) -> Path:
    """``out`` suffixed with the key of ``inputs``; written by ``write(folder)`` unless complete."""
    folder = out.with_name(f"{out.name}-{cache_key(realdata, inputs)}")
    if (folder / "items" / "items.json").exists():
        return folder
    work = folder.with_name(folder.name + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    try:
        write(work)
        shutil.rmtree(folder, ignore_errors=True)  # an incomplete one from before
        work.rename(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return folder


def eolearn_patch(realdata: Path) -> dict:
    """The eo-learn TestEOPatch as the tests use it (see tests/data/make_eolearn.py)."""
    base = realdata / EOLEARN
    coords = json.loads((base / "bbox.geojson").read_text())["coordinates"][0]  # a Polygon in EPSG:32633
    bounds = (min(c[0] for c in coords), min(c[1] for c in coords), max(c[0] for c in coords), max(c[1] for c in coords))
    times = json.loads((base / "timestamps.json").read_text())
    with np.load(base / "masks.npz") as masks, rasterio.open(base / "CLP.tif") as clp:
        return {
            "bounds": bounds, "epsg": 32633, "times": [datetime.fromisoformat(t).replace(tzinfo=timezone.utc) for t in times],
            "clm": masks["CLM"],
            "clp": clp.read(),
            "cloud_coverage": masks["CLOUD_COVERAGE"].astype(np.float64),
            "valid_count": masks["VALID_COUNT"],
        }


def reference_scenes(realdata: Path) -> np.ndarray:
    """eo-learn's REFERENCE_SCENES: (5, 101, 100, 13) float32 L1C reflectance, bands B01…B12 with B8A after B08."""
    with np.load(realdata / EOLEARN / "REFERENCE_SCENES_DN.npz") as f:
        return f["DN"] / np.float32(10000)


def write_eolearn_archive(out: Path, realdata: Path) -> Path:
    """The 68 eo-learn dates: assets ``clm`` (uint8 cloud mask), ``clp`` (s2cloudless
    probability 0–1) and ``cs_cdf`` (1 − CLP, a clear score in the manner of Cloud Score+).
    Returns the archive's folder: ``out`` suffixed with its cache key."""
    return _cached(out, realdata, EOLEARN_FILES, lambda folder: _write_eolearn_archive(folder, realdata))


def _write_eolearn_archive(out: Path, realdata: Path) -> Path:
    p = eolearn_patch(realdata)
    rows, cols = p["clm"].shape[1:]
    transform = from_bounds(*p["bounds"], cols, rows)
    items = []
    for t, when in enumerate(p["times"]):
        item_id = f"S2A_33TVM_{when:%Y%m%dT%H%M%S}_L2A"  # 2015-12-08 has two acquisitions
        folder = f"eolearn/{item_id}"
        write_cog(out / folder / "CLM.tif", p["clm"][t].astype(np.uint8), "EPSG:32633", transform)
        write_cog(out / folder / "CLP.tif", p["clp"][t].astype(np.float32), "EPSG:32633", transform)
        write_cog(out / folder / "CS_CDF.tif", (1.0 - p["clp"][t]).astype(np.float32), "EPSG:32633", transform)
        assets = {k: {"href": f"{folder}/{name}.tif", "type": "image/tiff; application=geotiff; profile=cloud-optimized", "roles": ["data"]}
                  for k, name in (("clm", "CLM"), ("clp", "CLP"), ("cs_cdf", "CS_CDF"))}
        items.append(_item(item_id, when, 32633, p["bounds"], assets))
    return _finish(out, items)


def write_sen2r_archive(out: Path, realdata: Path) -> Path:
    """The two real SCL crops over Lake Barbellino (EPSG:32632, 20 m); ``out`` suffixed with its cache key."""
    return _cached(out, realdata, SEN2R_FILES, lambda folder: _write_sen2r_archive(folder, realdata))


def _write_sen2r_archive(out: Path, realdata: Path) -> Path:
    items = []
    for name, when in ((SEN2R_SCL[0], datetime(2017, 7, 3, 10, 20, 21, tzinfo=timezone.utc)),
                       (SEN2R_SCL[1], datetime(2019, 7, 23, 10, 20, 31, tzinfo=timezone.utc))):
        with rasterio.open(realdata / "sen2r_barbellino" / name) as src:
            data, transform, bounds, nodata = src.read(1), src.transform, tuple(src.bounds), src.nodata
        item_id = f"S2A_32TNS_{when:%Y%m%d}_0_L2A"
        write_cog(out / "sen2r" / item_id / "SCL.tif", data, "EPSG:32632", transform, nodata=0 if nodata is None else nodata)
        assets = {"scl": {"href": f"sen2r/{item_id}/SCL.tif", "type": "image/tiff; application=geotiff; profile=cloud-optimized", "roles": ["data"]}}
        items.append(_item(item_id, when, 32632, bounds, assets, baseline="02.05"))
    return _finish(out, items)


def write_l1c_reference_archive(out: Path, realdata: Path) -> Path:
    """The five 13-band L1C reference scenes, twice: once as baseline 05.09 digital numbers
    (reflectance × 10000 + 1000 offset) and once as baseline 03.01 (no offset); ``out``
    suffixed with its cache key."""
    return _cached(out, realdata, L1C_FILES, lambda folder: _write_l1c_reference_archive(folder, realdata))


def _write_l1c_reference_archive(out: Path, realdata: Path) -> Path:
    scenes = reference_scenes(realdata)
    p = eolearn_patch(realdata)
    rows, cols = scenes.shape[1:3]
    transform = from_bounds(*p["bounds"], cols, rows)
    items = []
    for k in range(scenes.shape[0]):
        for baseline, offset, hour in (("05.09", 1000, 10), ("03.01", 0, 11)):
            when = datetime(2022, 6, 1 + k, hour, 0, 0, tzinfo=timezone.utc)
            item_id = f"S2A_33TVM_{when:%Y%m%d}_{0 if offset else 1}_L1C"
            folder = f"l1c/{item_id}"
            assets = {}
            for b, key in enumerate(L1C_ASSETS):
                dn = np.round(scenes[k, :, :, b] * 10000 + offset).astype(np.uint16)
                write_cog(out / folder / f"{key}.tif", dn, "EPSG:32633", transform, nodata=0)
                assets[key] = {"href": f"{folder}/{key}.tif", "type": "image/tiff; application=geotiff; profile=cloud-optimized", "roles": ["data"]}
            items.append(_item(item_id, when, 32633, p["bounds"], assets, baseline=baseline, collection="sentinel-2-l1c"))
    return _finish(out, items, collection="sentinel-2-l1c")


# --- Collection 1 (sentinel-2-c1-l2a) from the eo-learn series: the reference product's inputs ---

C1_COLLECTION = "sentinel-2-c1-l2a"
C1_ORIGIN = (465180.0, 5080260.0)  # the patch's bbox snapped to whole metres: exact 10 m cell edges
C1_PIXEL = 10.0
C1_SPLIT_DATES = (10, 40)  # these datatakes come as two overlapping products (tiles 33TVM and 33TWM)
C1_NEVER_OBSERVED = (slice(70, 95), slice(70, 95))  # 25 × 25 cells no date has data in …
C1_LONE_PIXEL = (82, 82)  # … but its centre (observed every third date): a neighbourhood with no data


def eolearn_c1_layers(realdata: Path) -> dict:
    """The eo-learn series as Collection-1 layers on a 101 × 100 grid of 10 m cells.

    ``cloud`` (uint8 percent) is round(100 · CLP), s2cloudless's probability in place of
    Sen2Cor's, 0 where a date has no data. ``scl`` (uint8): 0 no data, else 9 where CLM says cloud
    and cloud ≥ 65, 8 where CLM says cloud below that, 4 elsewhere, and 1 (defective, which still
    has data) on rows 50–52 every 13th date. IS_DATA is all 1 in the patch, so the swaths are
    drawn here: every 5th date misses the left third, every 7th (from 3) the bottom-right triangle
    beyond an oblique edge, every 11th (from 6) the top 20 rows, and no date sees
    ``C1_NEVER_OBSERVED`` except ``C1_LONE_PIXEL`` every third date. The dates of
    ``C1_SPLIT_DATES`` come as two products of one datatake, columns < 60 and ≥ 40: the same
    observation in the 20 columns both hold.

    Returns ``times``, ``transform``, ``scl`` and ``cloud`` (date, row, col) — one observation per
    datatake, what a correct reader sees — and ``products``: per date a list of (tile, scl, cloud)
    as the items hold them.
    """
    p = eolearn_patch(realdata)
    clp, clm = p["clp"], p["clm"]
    dates, rows, cols = clp.shape
    cloud = np.round(clp.astype(np.float64) * 100).astype(np.uint8)
    scl = np.where(clm == 1, np.where(cloud >= 65, 9, 8), 4).astype(np.uint8)
    r, c = np.mgrid[0:rows, 0:cols]
    for t in range(dates):
        gone = np.zeros((rows, cols), bool)
        if t % 5 == 0:
            gone |= c < cols // 3
        if t % 7 == 3:
            gone |= r + c > 130
        if t % 11 == 6:
            gone |= r < 20
        lone = gone[C1_LONE_PIXEL]  # what the swaths above leave of it
        gone[C1_NEVER_OBSERVED] = True
        if t % 3 == 0:
            gone[C1_LONE_PIXEL] = lone
        if t % 13 == 4:
            scl[t, 50:53] = 1
        scl[t][gone] = 0
        cloud[t][gone] = 0
    products = []
    for t in range(dates):
        if t in C1_SPLIT_DATES:
            west, east = c < 60, c >= 40
            products.append([(tile, np.where(part, scl[t], 0).astype(np.uint8), np.where(part, cloud[t], 0).astype(np.uint8))
                             for tile, part in (("33TVM", west), ("33TWM", east))])
        else:
            products.append([("33TVM", scl[t], cloud[t])])
    from rasterio.transform import from_origin

    return {"times": p["times"], "transform": from_origin(*C1_ORIGIN, C1_PIXEL, C1_PIXEL), "epsg": 32633,
            "scl": scl, "cloud": cloud, "products": products}


def _c1_asset(href: str, title: str, roles: list[str], shape, transform) -> dict:
    # as Earth Search declares them, nodata 0 on the cloud probability included
    return {"href": href, "type": "image/tiff; application=geotiff; profile=cloud-optimized", "title": title,
            "gsd": C1_PIXEL, "proj:shape": list(shape), "proj:transform": list(transform)[:6],
            "raster:bands": [{"nodata": 0, "data_type": "uint8", "spatial_resolution": C1_PIXEL}], "roles": roles}


def write_eolearn_c1_archive(out: Path, realdata: Path) -> Path:
    """:func:`eolearn_c1_layers` as Collection-1 items with assets ``scl`` (SCL.tif) and ``cloud``
    (CLD_20m.tif, GeoTIFF nodata tag 0 as Earth Search's, although 0 % is a real value), one
    item per product: 70 items, 68 datatakes. Returns ``out`` suffixed with its cache key."""
    return _cached(out, realdata, EOLEARN_FILES, lambda folder: _write_eolearn_c1_archive(folder, realdata))


def _write_eolearn_c1_archive(out: Path, realdata: Path) -> Path:
    layers = eolearn_c1_layers(realdata)
    transform, epsg = layers["transform"], layers["epsg"]
    shape = layers["scl"].shape[1:]
    bounds = (transform.c, transform.f + transform.e * shape[0], transform.c + transform.a * shape[1], transform.f)
    items = []
    for when, products in zip(layers["times"], layers["products"]):
        for tile, scl, cloud in products:
            item_id = f"S2A_T{tile}_{when:%Y%m%dT%H%M%S}_L2A"
            folder = f"c1/{item_id}"
            write_cog(out / folder / "SCL.tif", scl, f"EPSG:{epsg}", transform, nodata=0)
            write_cog(out / folder / "CLD_20m.tif", cloud, f"EPSG:{epsg}", transform, nodata=0)
            assets = {"scl": _c1_asset(f"{folder}/SCL.tif", "Scene classification map (SCL)", ["data"], shape, transform),
                      "cloud": _c1_asset(f"{folder}/CLD_20m.tif", "Cloud Probabilities", ["data", "cloud"], shape, transform)}
            item = _item(item_id, when, epsg, bounds, assets, baseline="05.10", collection=C1_COLLECTION)
            item["properties"].update({"mgrs:utm_zone": int(tile[:2]), "mgrs:latitude_band": tile[2],
                                       "mgrs:grid_square": tile[3:], "grid:code": f"MGRS-{tile}"})
            items.append(item)
    return _finish(out, items, collection=C1_COLLECTION)
