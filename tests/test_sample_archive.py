"""The sample archive is what it claims: Earth Search v1 form, two UTM zones, partial swaths,
split and duplicate products, and cloud statistics drawn from its stated truth."""
from __future__ import annotations

import csv
import json
import re
from collections import defaultdict

import numpy as np
import pytest
import rasterio

from cloud_probability.core import sample_archive as sa
from cloud_probability.core.progress import Cancelled, NullProgress
from cloud_probability.core.stac import normalise_item


@pytest.fixture(scope="module")
def items(sample_archive):
    return json.loads((sample_archive / "items" / "items.json").read_text())["features"]


@pytest.fixture(scope="module")
def layout():
    return sa.make_layout(sa.SampleSpec.small())


class _Info:
    """What a test needs of a dataset after it is closed."""

    def __init__(self, ds):
        self.dtypes, self.nodata, self.res, self.crs, self.transform = ds.dtypes, ds.nodata, ds.res, ds.crs, ds.transform
        self.compression, self.block_shapes, self.overview_list = ds.compression, ds.block_shapes, ds.overviews(1)


def _read(archive, item, key="scl"):
    with rasterio.open(archive / item["assets"][key]["href"]) as ds:
        return ds.read(1), _Info(ds)


def test_items_have_the_earth_search_v1_form(items):
    for item in items:
        p = item["properties"]
        assert item["collection"] == "sentinel-2-l2a" and item["stac_version"] == "1.0.0"
        assert re.fullmatch(r"S2[AB]_3[01]U[A-Z]{2}_2024\d{4}_[01]_L2A", item["id"]), item["id"]
        for key in ("eo:cloud_cover", "proj:epsg", "mgrs:utm_zone", "mgrs:latitude_band", "mgrs:grid_square",
                    "grid:code", "s2:processing_baseline", "s2:product_uri", "s2:datatake_id",
                    "s2:nodata_pixel_percentage", "earthsearch:boa_offset_applied", "platform"):
            assert key in p, (item["id"], key)
        assert p["eo:cloud_cover"] == pytest.approx(
            p["s2:high_proba_clouds_percentage"] + p["s2:medium_proba_clouds_percentage"] + p["s2:thin_cirrus_percentage"], abs=3e-5)
        scene = normalise_item(item)
        assert scene.relative_orbit in (94, 137) and scene.mgrs_tile == p["grid:code"][5:]


def test_two_utm_zones_overlapping_tiles_two_orbits_five_day_revisit(items, layout):
    from shapely.geometry import shape

    assert {i["properties"]["proj:epsg"] for i in items} == {32630, 32631}
    footprints = {}
    for i in items:
        footprints.setdefault(i["properties"]["grid:code"], []).append(shape(i["geometry"]))
    # neighbouring tiles, in one zone and across the zone boundary, overlap
    union = {code: max(geoms, key=lambda g: g.area) for code, geoms in footprints.items()}
    assert union["MGRS-30UYC"].intersects(union["MGRS-30UYD"]) and union["MGRS-30UYC"].intersects(union["MGRS-31UCT"])
    by_orbit = defaultdict(set)
    for d in layout.datatakes:
        by_orbit[d.orbit].add(d.sensing)
    assert set(by_orbit) == {94, 137}
    for orbit, times in by_orbit.items():
        days = sorted(t.date() for t in times)
        assert {(b - a).days for a, b in zip(days, days[1:])} == {5}, orbit
        sats = [d.satellite for d in sorted((d for d in layout.datatakes if d.orbit == orbit), key=lambda d: d.sensing)]
        assert all(a != b for a, b in zip(sats, sats[1:]))  # S2A and S2B alternate
    # partial swaths: some products have no data over part of the tile
    assert any(0 < i["properties"]["s2:nodata_pixel_percentage"] < 100 for i in items)


def test_split_datatake_and_reprocessed_duplicate(items, sample_archive):
    groups = defaultdict(list)
    for i in items:
        groups[(i["properties"]["s2:datatake_id"][:25], i["properties"]["grid:code"])].append(i)
    multi = [g for g in groups.values() if len(g) > 1]
    assert len(multi) == 2
    split = next(g for g in multi if {i["properties"]["s2:processing_baseline"] for i in g} == {"05.10"})
    dup = next(g for g in multi if {i["properties"]["s2:processing_baseline"] for i in g} == {"05.10", "05.11"})
    a, _ = _read(sample_archive, split[0])
    b, _ = _read(sample_archive, split[1])
    assert ((a > 0) & (b > 0)).sum() == 0 and (a > 0).any() and (b > 0).any()  # two disjoint datastrips
    assert len({i["properties"]["s2:datastrip_id"] for i in split}) == 2
    a, _ = _read(sample_archive, dup[0])
    b, _ = _read(sample_archive, dup[1])
    assert np.array_equal(a, b)  # reprocessing changed the baseline, not the pixels
    assert len({normalise_item(i).datatake_id for i in dup + split[:1]}) == 2


def test_scl_cogs(items, sample_archive):
    from osgeo import gdal

    for item in items[:: max(1, len(items) // 25)]:
        scl, ds = _read(sample_archive, item)
        assert ds.dtypes[0] == "uint8" and ds.nodata == 0 and ds.res == (20.0, 20.0)
        assert ds.crs.to_epsg() == item["properties"]["proj:epsg"]
        assert list(ds.transform)[:6] == item["assets"]["scl"]["proj:transform"]
        assert ds.compression.name.lower() == "deflate" and ds.block_shapes[0] == (128, 128)
        assert ds.overview_list, "no overviews"
        assert set(np.unique(scl)) <= set(range(12))
        info = gdal.Info(str(sample_archive / item["assets"]["scl"]["href"]), format="json")
        assert info["metadata"]["IMAGE_STRUCTURE"]["LAYOUT"] == "COG"
        counts = np.bincount(scl.ravel(), minlength=12)
        truth = json.loads((sample_archive / "truth" / "scenes.json").read_text())[item["id"]]["class_counts"]
        assert [truth[str(c)] for c in range(12)] == counts.tolist()


def test_every_scl_class_occurs(items, sample_archive):
    seen = set()
    for item in items[::3]:
        seen |= set(np.unique(_read(sample_archive, item)[0]).tolist())
    assert seen == set(range(12))


def test_true_colour_for_a_subset(items, sample_archive):
    with_rgb = [i for i in items if "red" in i["assets"]]
    assert 0 < len(with_rgb) < len(items)
    # a scene with both thick cloud (9) and vegetation (4)
    item = next(i for i in with_rgb if {4, 9} <= set(np.unique(_read(sample_archive, i)[0]).tolist()))
    scl, _ = _read(sample_archive, item)
    red, ds = _read(sample_archive, item, "red")
    assert ds.res == (10.0, 10.0) and red.shape == (2 * scl.shape[0], 2 * scl.shape[1]) and ds.dtypes[0] == "uint16"
    up = np.repeat(np.repeat(scl, 2, 0), 2, 1)
    assert np.median(red[up == 9]) > 5 * np.median(red[up == 4])  # clouds are bright
    assert (red[up == 0] == 0).all()


def test_tiles_of_one_datatake_agree_across_the_zone_boundary(items, sample_archive, layout):
    """Every field is drawn in EPSG:27700, so zone-30 and zone-31 tiles of one pass agree."""
    from pyproj import Transformer

    pairs = defaultdict(dict)
    for i in items:
        if i["properties"]["s2:processing_baseline"] == "05.10" and "_0_" in i["id"]:
            pairs[i["properties"]["s2:datatake_id"]][i["properties"]["grid:code"]] = i
    agree = total = 0
    to31 = Transformer.from_crs(32630, 32631, always_xy=True)
    for tiles in list(pairs.values())[:40]:
        if "MGRS-30UYC" not in tiles or "MGRS-31UCT" not in tiles:
            continue
        a, da = _read(sample_archive, tiles["MGRS-30UYC"])
        b, db = _read(sample_archive, tiles["MGRS-31UCT"])
        rows, cols = np.mgrid[0:a.shape[0], 0:a.shape[1]]
        x, y = da.transform * (cols + 0.5, rows + 0.5)
        x31, y31 = to31.transform(x, y)
        r, c = ~db.transform * (x31, y31)
        r, c = np.floor(c).astype(int), np.floor(r).astype(int)
        inside = (r >= 0) & (r < b.shape[0]) & (c >= 0) & (c < b.shape[1])
        va, vb = a[inside], b[r[inside], c[inside]]
        both = (va > 0) & (vb > 0)
        agree += int((va[both] == vb[both]).sum())
        total += int(both.sum())
    assert total > 10_000
    assert agree / total > 0.95  # nearest-pixel resampling differs only along class edges


def test_cloud_frequency_follows_the_truth_and_shows_the_artefacts(items, sample_archive, layout):
    from shapely.geometry import Point

    ux, uy, _ = layout.urban
    tile = next(t for t in layout.tiles if sa._tile_polygon_27700(t).contains(Point(ux, uy)))
    valid = np.zeros((tile.size_px, tile.size_px), int)
    cloudy = np.zeros_like(valid)
    seen = set()
    for i in items:
        if i["properties"]["grid:code"] != f"MGRS-{tile.code}":
            continue
        key = normalise_item(i).datatake_id
        scl, _ = _read(sample_archive, i)
        if key in seen and i["properties"]["s2:processing_baseline"] == "05.11":
            continue  # the reprocessed duplicate
        seen.add(key)
        valid += scl > 1
        cloudy += np.isin(scl, [8, 9, 10])
    x, y = sa.tile_positions_27700(tile, slice(0, tile.size_px))
    p = sa.true_probability(x, y, layout.aoi)
    urban = (x - layout.urban[0]) ** 2 + (y - layout.urban[1]) ** 2 < layout.urban[2] ** 2
    band = np.maximum(sa.edge_band(layout, 94, x, y) * sa.in_swath(layout, 94, x, y),
                      sa.edge_band(layout, 137, x, y) * sa.in_swath(layout, 137, x, y)) > 0
    freq = cloudy / np.maximum(valid, 1)
    clean = (valid > 20) & ~urban & ~band
    assert valid.min() < valid.max()  # acquisitions differ across the tile (partial swaths)
    # the orbit band covers the overlap, so "clean" is the single-orbit part of the tile only
    assert np.corrcoef(freq[clean], p[clean])[0, 1] > 0.6
    assert abs((freq - p)[clean].mean()) < 0.05
    clean_bias = (freq - p)[clean].mean()
    # urban: clear pixels classified as cloud at 15 %, i.e. about 0.15 × (1 − p) more cloud
    urban_excess = (freq - p)[urban & (valid > 20)].mean() - clean_bias
    assert 0.04 < urban_excess < 0.12
    # the over-detection band along swath edges lies in the orbit overlap
    band_excess = (freq - p)[band & ~urban & (valid > 20)].mean() - clean_bias
    assert 0.01 < band_excess < 0.08


def test_truth_raster_and_small_areas(sample_archive, layout):
    import geopandas as gpd

    with rasterio.open(sample_archive / "truth" / "probability_27700.tif") as ds:
        truth = ds.read(1)
        assert ds.crs.to_epsg() == 27700 and ds.res == (20.0, 20.0)
        assert tuple(ds.bounds) == tuple(layout.aoi)
        rows, cols = np.mgrid[0:ds.height, 0:ds.width]
        x, y = ds.transform * (cols + 0.5, rows + 0.5)
    np.testing.assert_allclose(truth, 100 * sa.true_probability(x, y, layout.aoi), atol=1e-3)
    zones = gpd.read_file(sample_archive / "zones" / "small_areas.gpkg", layer="small_areas")
    assert len(zones) >= 250 and zones.crs.to_epsg() == 27700
    assert zones["code"].str.fullmatch(r"E01\d{6}").all() and zones["code"].is_unique
    aoi_area = (layout.aoi[2] - layout.aoi[0]) * (layout.aoi[3] - layout.aoi[1])
    assert zones.area.sum() == pytest.approx(aoi_area, rel=1e-6)  # they tile the area
    with open(sample_archive / "truth" / "small_areas_truth.csv") as fh:
        rows = {r["code"]: float(r["true_cloud_prob_pct"]) for r in csv.DictReader(fh)}
    assert set(rows) == set(zones["code"])
    # a zone's truth is the area mean of p: close to the truth raster's mean inside it
    from rasterio import features

    ids = features.rasterize(((g, i + 1) for i, g in enumerate(zones.geometry)), out_shape=truth.shape,
                             transform=rasterio.open(sample_archive / "truth" / "probability_27700.tif").transform)
    big = zones.area.sort_values().index[-20:]
    for i in big:
        assert truth[ids == i + 1].mean() == pytest.approx(rows[zones.loc[i, "code"]], abs=0.5)


def test_generation_is_atomic_and_reused(tmp_path):
    class CancelSoon(NullProgress):
        calls = 0

        def is_canceled(self):
            self.calls += 1
            return self.calls > 5

    spec = sa.SampleSpec.small(max_datatakes=6, n_zones=20)
    with pytest.raises(Cancelled):
        sa.generate(tmp_path / "arch", spec, CancelSoon())
    assert not (tmp_path / "arch").exists() and not (tmp_path / "arch.partial").exists()
    out = sa.generate(tmp_path / "arch", spec)
    stamp = (out / "archive.json").stat().st_mtime_ns
    assert sa.generate(tmp_path / "arch", spec) == out and (out / "archive.json").stat().st_mtime_ns == stamp
