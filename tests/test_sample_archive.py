"""The sample archive is what it claims: Earth Search v1 Collection 1 form, two UTM zones,
partial swaths, split and duplicate products, a Sen2Cor-like ``cloud`` asset, and cloud
statistics drawn from its stated truth."""
from __future__ import annotations

import csv
import json
import math
import re
from collections import defaultdict

import numpy as np
import pytest
import rasterio

from cloud_probability.core.progress import Cancelled, NullProgress
from cloud_probability.core.stac import normalise_item
from cloud_probability.sampledata import sample_archive as sa


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


def _real_c1(realdata):
    """A real Earth Search v1 Collection 1 item, the collection document, and every real C1 item."""
    every = [f for page in sorted((realdata / "earthsearch_stac").glob("es_v1_search_*.json"))
             for f in json.loads(page.read_text())["features"] if f.get("collection") == "sentinel-2-c1-l2a"]
    item = next(f for f in every if f["id"] == "S2B_T25LBG_20240809T124253_L2A")
    collection = json.loads((realdata / "earthsearch_stac" / "es_v1_collection_sentinel-2-c1-l2a.json").read_text())
    return item, collection, every


def test_items_have_the_earth_search_collection_1_form(items, realdata):
    real, _, every = _real_c1(realdata)
    id_form = r"S2[AB]_T\d{2}[A-Z]{3}_\d{8}T\d{6}_L2A"  # the real item's: S2B_T25LBG_20240809T124253_L2A
    assert re.fullmatch(id_form, real["id"]) and real["collection"] == "sentinel-2-c1-l2a"
    # the properties every real Collection 1 item has, some of those only some have, and projection
    # v2's proj:code besides proj:epsg
    assert len(every) >= 10
    always = set.intersection(*(set(f["properties"]) for f in every)) | {"proj:code"}
    sometimes = set.union(*(set(f["properties"]) for f in every)) | {"proj:code"}
    for item in items:
        p = item["properties"]
        assert item["collection"] == "sentinel-2-c1-l2a" and item["stac_version"] == "1.0.0"
        assert re.fullmatch(id_form, item["id"]) and f"_T{p['grid:code'][5:]}_" in item["id"], item["id"]
        assert always <= set(p) <= sometimes, (item["id"], always - set(p), set(p) - sometimes)
        assert p["proj:code"] == f"EPSG:{p['proj:epsg']}"
        assert p["s2:processing_baseline"] in ("05.10", "05.11")
        assert p["eo:cloud_cover"] == pytest.approx(
            p["s2:high_proba_clouds_percentage"] + p["s2:medium_proba_clouds_percentage"] + p["s2:thin_cirrus_percentage"], abs=3e-5)
        # named after the datastrip's sensing start, as Earth Search names Collection 1 items
        assert item["id"][-19:-4] == p["s2:datastrip_id"].split("_S")[-1][:15]
        folder = f"sentinel-2-c1-l2a/{p['mgrs:utm_zone']}/U/{p['mgrs:grid_square']}/2024/"
        assert item["assets"]["scl"]["href"].startswith(folder)
        scene = normalise_item(item)
        assert scene.collection == "sentinel-2-c1-l2a" and scene.epsg == p["proj:epsg"]
        assert scene.relative_orbit in (94, 137) and scene.mgrs_tile == p["grid:code"][5:]
        assert scene.asset_href("cloud") == item["assets"]["cloud"]["href"]


def test_cloud_asset_as_earth_search_declares_it(items, sample_archive, realdata):
    real, real_collection, _ = _real_c1(realdata)
    for item in items:
        scl, cloud = item["assets"]["scl"], item["assets"]["cloud"]
        assert cloud["href"] == scl["href"].replace("/SCL.tif", "/CLD_20m.tif")
        for key in ("type", "title", "gsd", "raster:bands", "roles"):  # uint8, nodata 0, 20 m, roles data + cloud
            assert cloud[key] == real["assets"]["cloud"][key], key
            assert scl[key] == real["assets"]["scl"][key], key
        assert set(cloud) == set(real["assets"]["cloud"]) - {"file:checksum", "file:size"}
        assert cloud["proj:shape"] == scl["proj:shape"] and cloud["proj:transform"] == scl["proj:transform"]
    collection = json.loads((sample_archive / "items" / "collection.json").read_text())
    assert collection["id"] == real_collection["id"] == "sentinel-2-c1-l2a"
    for key in ("type", "title", "raster:bands", "roles"):
        assert collection["item_assets"]["cloud"][key] == real_collection["item_assets"]["cloud"][key]


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


def test_scl_cogs(items, sample_archive, layout):
    """SCL COGs as Earth Search's: uint8, nodata 0, 20 m, DEFLATE, 128-pixel tiles, overviews.
    No data exactly outside the orbit's swath as the layout states it (an edge line in
    EPSG:27700, pixel centres projected from the COG's own grid with PROJ); a split datastrip's
    two products hold complementary rows of the tile; and the item's no-data and cloud
    percentages are those of the file's pixels."""
    from osgeo import gdal
    from pyproj import Transformer

    cy = (layout.aoi[1] + layout.aoi[3]) / 2
    pairs = defaultdict(list)  # split datastrips: two products of one datatake, tile and baseline
    for i in items:
        p = i["properties"]
        pairs[(p["s2:datatake_id"], p["grid:code"])].append(i)
    split = {i["id"]: g for g in pairs.values() if len(g) == 2 for i in g}
    checked = set()
    for item in items[:: max(1, len(items) // 25)] + [g[0] for g in pairs.values() if len(g) == 2]:
        scl, ds = _read(sample_archive, item)
        assert ds.dtypes[0] == "uint8" and ds.nodata == 0 and ds.res == (20.0, 20.0)
        assert ds.crs.to_epsg() == item["properties"]["proj:epsg"]
        assert f"EPSG:{ds.crs.to_epsg()}" == item["properties"]["proj:code"]
        assert list(ds.transform)[:6] == item["assets"]["scl"]["proj:transform"]
        assert ds.compression.name.lower() == "deflate" and ds.block_shapes[0] == (128, 128)
        assert ds.overview_list, "no overviews"
        assert set(np.unique(scl)) <= set(range(12))
        info = gdal.Info(str(sample_archive / item["assets"]["scl"]["href"]), format="json")
        assert info["metadata"]["IMAGE_STRUCTURE"]["LAYOUT"] == "COG"
        p = item["properties"]
        rows, cols = np.mgrid[0:scl.shape[0], 0:scl.shape[1]]
        x, y = Transformer.from_crs(ds.crs.to_epsg(), 27700, always_xy=True).transform(*(ds.transform * (cols + 0.5, rows + 0.5)))
        side, x_c, slope = layout.swath_edges[int(re.search(r"_R(\d{3})_", p["s2:product_uri"]).group(1))]
        beyond = x - (x_c + slope * (y - cy))  # metres east of the swath edge
        inside = beyond < 0 if side == "west" else beyond > 0
        sure = np.abs(beyond) > 0.01  # the generator projects through a lattice good to a few mm
        if item["id"] in split:  # the tile's rows are cut between the two datastrips
            a, b = (_read(sample_archive, i)[0] > 0 for i in split[item["id"]])
            assert not (a & b).any() and ((a | b) == inside)[sure].all(), item["id"]
            for part in (a, b):  # each holds whole rows of the swath
                assert all(len(set(part[k][inside[k] & sure[k]].tolist())) <= 1 for k in range(part.shape[0]))
        else:
            assert ((scl > 0) == inside)[sure].all(), item["id"]
        checked.add(item["id"])
        counts = np.bincount(scl.ravel(), minlength=12)
        data = scl.size - counts[0]
        assert p["s2:nodata_pixel_percentage"] == pytest.approx(100 * counts[0] / scl.size, abs=1e-6)
        assert p["eo:cloud_cover"] == pytest.approx(100 * counts[8:11].sum() / data, abs=1e-6)
        assert p["s2:cloud_shadow_percentage"] == pytest.approx(100 * counts[3] / data, abs=1e-6)
    assert len(checked) > 20 and any(i in split for i in checked)


def test_cloud_cogs(items, sample_archive):
    """CLD_20m.tif: uint8 on the SCL's grid and tiling, GeoTIFF nodata 0, 0 wherever the SCL is 0."""
    truth = json.loads((sample_archive / "truth" / "scenes.json").read_text())
    for item in items[:: max(1, len(items) // 25)]:
        scl, s = _read(sample_archive, item)
        cloud, c = _read(sample_archive, item, "cloud")
        assert c.dtypes[0] == "uint8" and c.nodata == 0 and c.res == (20.0, 20.0) and c.crs == s.crs
        assert c.transform == s.transform and cloud.shape == scl.shape and c.block_shapes == s.block_shapes
        assert c.compression == s.compression and c.overview_list
        assert cloud.max() <= 100 and (cloud[scl == 0] == 0).all()
        sums = np.bincount(scl.ravel(), weights=cloud.ravel(), minlength=12)
        assert [truth[item["id"]]["cloud_sums"][str(k)] for k in range(12)] == sums.astype(int).tolist()


def test_cloud_values_are_drawn_as_sen2cor_s(items, sample_archive):
    """High and rising with opacity under cloud, medium on false clouds, mostly 0 over clear ground.

    The rule (sampledata/sample_archive.py): cloudy pixels round(30 + 70 · opacity) with thin cirrus
    below opacity 0.2, medium cloud below 0.55, high cloud above; urban false clouds (SCL 8)
    35–65; clear pixels 0, or in 20 % of them 1–19.
    """
    values = defaultdict(list)
    for item in items[::4]:
        scl, _ = _read(sample_archive, item)
        cloud, _ = _read(sample_archive, item, "cloud")
        for k in range(12):
            values[k].append(cloud[scl == k])
    v = {k: np.concatenate(a) for k, a in values.items()}
    assert (v[0] == 0).all()
    assert v[9].min() >= 68 and v[9].max() >= 98 and np.median(v[9]) > 80
    assert 44 <= np.median(v[8]) <= 68 and v[8].min() >= 35 and v[8].max() <= 68
    assert 30 <= v[10].min() and v[10].max() <= 44
    assert np.median(v[9]) > np.median(v[8]) > np.median(v[10]) > 0
    clear = np.concatenate([v[k] for k in (2, 3, 4, 5, 6, 7, 11)])
    assert clear.size > 500_000 and clear.max() <= 19
    assert (clear == 0).mean() == pytest.approx(0.8, abs=0.01)
    assert clear[clear > 0].mean() == pytest.approx(10.0, abs=0.1)  # uniform on 1…19
    assert np.array_equal(np.unique(clear), np.arange(20))


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
    assert (red[up == 0] == 0).all()
    # Collection 1 keeps the +1000 BOA offset in the numbers and declares scale and offset
    band = item["assets"]["red"]["raster:bands"][0]
    assert band["scale"] == 0.0001 and band["offset"] == -0.1
    assert "earthsearch:boa_offset_applied" not in item["properties"]
    reflectance = red * band["scale"] + band["offset"]
    assert np.median(reflectance[up == 9]) > 5 * np.median(reflectance[up == 4])  # clouds are bright
    assert 0.02 < np.median(reflectance[up == 4]) < 0.05  # vegetation's red reflectance


def test_tiles_of_one_datatake_agree_across_the_zone_boundary(items, sample_archive, layout):
    """Every field is drawn in EPSG:27700, so zone-30 and zone-31 tiles of one pass agree."""
    from pyproj import Transformer

    pairs = defaultdict(lambda: defaultdict(list))
    for i in items:
        if i["properties"]["s2:processing_baseline"] == "05.10":
            pairs[i["properties"]["s2:datatake_id"]][i["properties"]["grid:code"]].append(i)
    agree = total = 0
    to31 = Transformer.from_crs(32630, 32631, always_xy=True)
    for tiles in list(pairs.values())[:40]:
        if len(tiles["MGRS-30UYC"]) != 1 or len(tiles["MGRS-31UCT"]) != 1:  # not there, or split datastrips
            continue
        a, da = _read(sample_archive, tiles["MGRS-30UYC"][0])
        b, db = _read(sample_archive, tiles["MGRS-31UCT"][0])
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


def test_truth_of_the_mean_cloud_probability(sample_archive):
    """The published formula: E[cloud] = 100 · (0.65 · p + 0.02 · (1 − p)), raster and per area."""
    with rasterio.open(sample_archive / "truth" / "probability_27700.tif") as ds:
        p = ds.read(1).astype(np.float64) / 100
        grid = (ds.transform, ds.crs, ds.shape)
    with rasterio.open(sample_archive / "truth" / "mean_cloud_probability_27700.tif") as ds:
        mean = ds.read(1)
        assert (ds.transform, ds.crs, ds.shape) == grid and ds.tags()["units"] == "percent"
    np.testing.assert_allclose(mean, 100 * (0.65 * p + 0.02 * (1 - p)), atol=1e-3)
    np.testing.assert_allclose(sa.expected_cloud_value(p), 100 * (0.65 * p + 0.02 * (1 - p)), atol=1e-9)
    with open(sample_archive / "truth" / "small_areas_truth.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) >= 250
    for r in rows:  # the area mean of a linear function of p is that function of the area mean of p
        p_area = float(r["true_cloud_prob_pct"]) / 100
        expected = 100 * (0.65 * p_area + 0.02 * (1 - p_area))
        assert float(r["true_mean_cloud_prob_pct"]) == pytest.approx(expected, abs=2e-4)


def _grid(layout, step=20.0):
    from rasterio.transform import from_origin

    xmin, ymin, xmax, ymax = layout.aoi
    return from_origin(xmin, ymax, step, step), (int(round((ymax - ymin) / step)), int(round((xmax - xmin) / step)))


def test_observation_sums_are_what_the_cogs_hold(items, sample_archive, layout):
    """An independent reading of the files, by the rule: per datatake, products by newest baseline
    then item id, the first whose SCL pixel under the grid pixel's centre has data gives the
    observation and its ``cloud`` value."""
    from pyproj import Transformer
    from rasterio.transform import from_origin

    gx, gy = sa.GREENWICH_27700
    transform, shape = from_origin(gx - 1010, gy + 990, 20, 20), (100, 100)  # across UTM zones 30 and 31
    chosen = list(range(0, len(layout.datatakes), 8))
    index_of = {d.datatake_id: d.index for d in layout.datatakes}
    truth = json.loads((sample_archive / "truth" / "scenes.json").read_text())
    by_datatake = defaultdict(list)
    for item in items:
        index = index_of[truth[item["id"]]["datatake"]]
        if index in chosen:
            by_datatake[index].append(item)
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
    x, y = transform * (cols + 0.5, rows + 0.5)
    valid = np.zeros(shape, int)
    cloud_sum = np.zeros(shape)
    for group in by_datatake.values():
        group.sort(key=lambda i: (-float(i["properties"]["s2:processing_baseline"]), i["id"]))
        done = np.zeros(shape, bool)
        for item in group:
            scl, info = _read(sample_archive, item)
            cloud, _ = _read(sample_archive, item, "cloud")
            ex, ny = Transformer.from_crs(27700, info.crs.to_epsg(), always_xy=True).transform(x, y)
            c, r = ~info.transform * (ex, ny)
            r, c = np.floor(r).astype(int), np.floor(c).astype(int)
            inside = (r >= 0) & (r < scl.shape[0]) & (c >= 0) & (c < scl.shape[1]) & ~done
            take = np.zeros(shape, bool)
            take[inside] = scl[r[inside], c[inside]] != 0
            cloud_sum[take] += cloud[r[take], c[take]] / 100
            valid += take
            done |= take
    v, s, sq = sa.observation_sums(sa.SampleSpec.small(), 27700, transform, shape, datatakes=chosen)
    assert v.dtype == np.uint16 and s.dtype == sq.dtype == np.float64
    assert valid.max() > 10 and np.array_equal(v, valid)
    np.testing.assert_allclose(s, cloud_sum, atol=1e-9)
    assert (sq <= s + 1e-12).all() and (sq >= s**2 / np.maximum(v, 1) - 1e-9).all()  # values in [0, 1]
    # validity is the SCL's alone: the frequency's count (which also drops class 1) is never larger
    counted, _ = sa.observation_counts(sa.SampleSpec.small(), 27700, transform, shape, datatakes=chosen)
    assert (counted <= v).all() and (counted < v).any()


def _cluster_mean(groups, mask, expected):
    """Mean error of the observations in ``mask`` against ``expected`` (percent per pixel), and its
    standard error from the spread between independent groups of datatakes (all pixels of an
    acquisition share its draw, so pixels are not independent; acquisitions are)."""
    s = np.array([(100 * cloud_sum - expected * valid)[mask].sum() for valid, cloud_sum in groups])
    n = np.array([valid[mask].sum() for valid, _ in groups], dtype=np.float64)
    mean = s.sum() / n.sum()
    k = len(groups)
    se = math.sqrt(k / (k - 1) * ((s - mean * n) ** 2).sum()) / n.sum()
    return mean, se


def _group_means(groups, mask, expected):
    """Each group's mean error (percent) of the observations in ``mask`` against ``expected``."""
    return np.array([(100 * cloud_sum - expected * valid)[mask].sum() / valid[mask].sum()
                     for valid, cloud_sum in groups])


def test_mean_cloud_probability_approaches_its_truth(sample_archive, layout):
    """Over independent years, the mean of the ``cloud`` asset approaches the published expected
    value away from the artefacts, and shows them where they are (the orbit-edge band, the urban
    false clouds). One year's error is not small: all pixels share each day's draw."""
    transform, shape = _grid(layout, 60.0)  # 60 m cells centred on every third 20 m truth pixel
    with rasterio.open(sample_archive / "truth" / "probability_27700.tif") as ds:
        p = ds.read(1)[1::3, 1::3].astype(np.float64) / 100
    assert p.shape == shape
    expected = 100 * (0.65 * p + 0.02 * (1 - p))
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
    x, y = transform * (cols + 0.5, rows + 0.5)
    overlap = sa.in_swath(layout, 94, x, y) & sa.in_swath(layout, 137, x, y)  # = the over-detection band
    ux, uy, ur = layout.urban
    urban = (x - ux) ** 2 + (y - uy) ** 2 < ur**2
    # independent groups of datatakes (every third of each of six years), for the standard error
    n = len(layout.datatakes)
    groups = [sa.observation_sums(sa.SampleSpec.small(seed=seed), 27700, transform, shape, datatakes=range(g, n, 3))[:2]
              for seed in (2024, 1, 2, 3, 4, 5) for g in range(3)]
    clean = ~overlap & ~urban
    err, se = _cluster_mean(groups, clean, expected)
    assert se < 1.5 and abs(err) < 4 * se, (err, se)
    spec = sa.SampleSpec.small()
    # in the band every observation is drawn with q = p + 0.08: 100 · 0.63 · 0.08 = 5.04 points more
    band_err, band_se = _cluster_mean(groups, overlap & ~urban, expected + 100 * 0.63 * spec.edge_bias)
    assert abs(band_err) < 4 * band_se < 100 * 0.63 * spec.edge_bias, (band_err, band_se)
    # urban: 15 % of the clear observations read 35–65 % (mean 50) instead of 2 % on average. The disc is
    # small, so compare it with the ring around it in each group: the day's common draw cancels
    excess = spec.urban_false_cloud * (50 - 2) * (1 - p)
    ring = ~overlap & ~urban & ((x - ux) ** 2 + (y - uy) ** 2 < (2 * ur) ** 2)
    d = _group_means(groups, urban & ~overlap, expected + excess) - _group_means(groups, ring, expected)
    d_se = d.std(ddof=1) / math.sqrt(len(d))
    assert abs(d.mean()) < 4 * d_se < excess[urban].mean(), (d.mean(), d_se)  # and the test can see the artefact


def test_observation_sums_of_another_seed_are_another_year(layout):
    """A seed-changed spec is an independent year: same acquisitions and swaths, other clouds."""
    transform, shape = _grid(layout, 60.0)
    chosen = range(0, len(layout.datatakes), 3)
    a = sa.observation_sums(sa.SampleSpec.small(), 27700, transform, shape, datatakes=chosen)
    b = sa.observation_sums(sa.SampleSpec.small(seed=7), 27700, transform, shape, datatakes=chosen)
    assert np.array_equal(a[0], b[0])  # validity depends on the swaths only
    assert a[0].max() > 20 and np.isclose(a[1], b[1]).mean() < 0.05
    assert (b[1] <= b[0]).all() and (b[2] <= b[1]).all()


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
