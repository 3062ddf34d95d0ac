"""core.screening and core.masks on real data and on the sample archive's truth, every read
going over HTTP (core.cog or GDAL /vsicurl/) against nginx on loopback."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import rasterio
from conftest import served_scenes
from shapely.geometry import box, shape

from cloud_probability.sampledata import sample_archive as sa
from cloud_probability.core.masks import (
    CLEAR, CLOUD, NODATA, PRESETS, SHADOW, SNOW, MaskSpec, dilate_clouds, mask_from_scl, mask_from_score,
)
from cloud_probability.core.progress import Cancelled, NullProgress
from cloud_probability.core.screening import screen_scenes


@pytest.fixture(params=["native", "gdal"])
def reader(request, monkeypatch):
    """Each real-data check through both readers: core.cog, and GDAL's /vsicurl/ alone."""
    from cloud_probability.core.reading import clear_http_cache

    monkeypatch.setenv("CLOUDPROB_NATIVE_COG", "YES" if request.param == "native" else "NO")
    clear_http_cache()
    yield request.param
    clear_http_cache()


def test_mask_from_scl_classes():
    scl = np.arange(12, dtype=np.uint8)
    assert mask_from_scl(scl, PRESETS["scl"]).tolist() == [
        NODATA, NODATA, CLEAR, SHADOW, CLEAR, CLEAR, CLEAR, CLEAR, CLOUD, CLOUD, CLOUD, SNOW]
    spec = replace(PRESETS["scl"], cloud_classes=(3, 8, 9))  # cirrus not cloud, shadows are
    assert mask_from_scl(scl, spec).tolist()[3] == CLOUD and mask_from_scl(scl, spec).tolist()[10] == CLEAR


def test_score_directions():
    values = np.array([0.1, 0.39, 0.4, 0.9, np.nan])
    assert mask_from_score(values, PRESETS["s2cloudless_probability"]).tolist() == [CLEAR, CLEAR, CLOUD, CLOUD, NODATA]
    assert mask_from_score(values, PRESETS["cloud_score_plus"]).tolist() == [CLOUD, CLOUD, CLOUD, CLEAR, NODATA]
    clp = np.array([0, 101, 102, 255], dtype=np.uint8)  # Sentinel Hub CLP is 0–255
    assert mask_from_score(clp, PRESETS["sentinelhub_clp"]).tolist() == [CLEAR, CLEAR, CLOUD, CLOUD]


def test_dilation_is_a_disc_in_metres_and_keeps_no_data():
    mask = np.zeros((11, 11), np.uint8)
    mask[5, 5] = CLOUD
    mask[0, :] = NODATA
    grown = dilate_clouds(mask, 40.0, 20.0)  # 2 pixels
    assert (grown == CLOUD).sum() == 13  # the radius-2 disc
    assert (grown[0] == NODATA).all()
    assert (dilate_clouds(mask, 19.0, 20.0) == mask).all()


def test_sen2r_scene_gives_its_13_1_percent(sen2r_servers, reader):
    scenes = served_scenes(sen2r_servers)
    with rasterio.open(scenes[0].item["assets"]["scl"]["href"].replace(sen2r_servers.cogs.url, str(sen2r_servers.archive))) as ds:
        area = box(*ds.bounds)
    result = screen_scenes(scenes, area, 32632, PRESETS["scl"])
    by_day = {o.scene.datetime[:10]: o.fractions for o in result.observations}
    assert by_day["2017-07-03"].cloud_pct == pytest.approx(100 * 33 / 252)  # classes 8 (30 px) + 9 (3 px)
    assert round(by_day["2017-07-03"].cloud_pct, 1) == 13.1
    assert by_day["2017-07-03"].valid_pct == 100.0 and by_day["2017-07-03"].area_pixels == 252
    assert by_day["2019-07-23"].cloud_pct == 0.0
    assert [o.scene.datetime[:10] for o in result.observations] == ["2019-07-23", "2017-07-03"]  # clearest first
    assert 0 < result.bytes_fetched


def test_sen2r_polygon_area(sen2r_servers, realdata, reader):
    """A non-rectangular area: only pixels whose centre is inside count (checked with GDAL's rasterizer)."""
    from rasterio import features

    polygon = json.loads((realdata / "sen2r_barbellino" / "barbellino.geojson").read_text())
    geom = shape(polygon["features"][0]["geometry"] if "features" in polygon else polygon)
    scenes = served_scenes(sen2r_servers)
    result = screen_scenes(scenes, geom, 32632, PRESETS["scl"])
    obs = next(o for o in result.observations if o.scene.datetime.startswith("2017"))
    with rasterio.open(sen2r_servers.archive / scenes[0].item["assets"]["scl"]["href"].split(sen2r_servers.cogs.url + "/")[-1]) as ds:
        scl = ds.read(1)
        inside = features.geometry_mask([geom], scl.shape, ds.transform, invert=True)
    expected = 100 * np.isin(scl[inside], [8, 9, 10]).sum() / inside.sum()
    assert obs.fractions.area_pixels == inside.sum() < 252
    assert obs.fractions.cloud_pct == pytest.approx(expected)


def test_eolearn_cloud_coverage_per_date(eolearn_servers, realdata, reader):
    """CLM written as COGs: the whole patch's cloud share per date equals CLOUD_COVERAGE."""
    import realdata_archives

    patch = realdata_archives.eolearn_patch(realdata)
    scenes = served_scenes(eolearn_servers)
    spec = MaskSpec(source="score", asset="clm", threshold=0.5, cloud_when="above")
    area = box(*patch["bounds"]).buffer(-1.0)  # pixel centres of the whole patch
    result = screen_scenes(scenes, area, 32633, spec, resolution=10.0, concurrency=8)
    assert len(result.observations) == 68 and result.errors == 0
    got = {o.scene.datetime: o.fractions.cloud_pct / 100 for o in result.observations}
    for t, when in enumerate(patch["times"]):
        key = when.strftime("%Y-%m-%dT%H:%M:%S.000000Z").replace(".000000Z", "Z")
        value = next(v for k, v in got.items() if k.startswith(when.strftime("%Y-%m-%dT%H:%M:%S")))
        assert value == pytest.approx(patch["clm"][t].mean(), abs=1e-12), key
        # CLOUD_COVERAGE is stored as float16: it is our value rounded to float16
        assert np.float16(value) == np.float16(patch["cloud_coverage"][t]), key
        assert value == pytest.approx(patch["cloud_coverage"][t], abs=2.5e-4), key


def test_eolearn_probability_rasters_both_directions(eolearn_servers, realdata, reader):
    """CLP (cloud when ≥ 0.4) and 1 − CLP as a clear score (cloud when < 0.6) agree with numpy."""
    import realdata_archives

    patch = realdata_archives.eolearn_patch(realdata)
    scenes = served_scenes(eolearn_servers)
    area = box(*patch["bounds"]).buffer(-1.0)
    clp = screen_scenes(scenes, area, 32633, PRESETS["s2cloudless_probability"].__class__(
        source="score", asset="clp", threshold=0.4, cloud_when="above"), resolution=10.0)
    cs = screen_scenes(scenes, area, 32633, replace(PRESETS["cloud_score_plus"], threshold=0.6), resolution=10.0)
    a = {o.scene.item_id: o.fractions.cloud_pct for o in clp.observations}
    b = {o.scene.item_id: o.fractions.cloud_pct for o in cs.observations}
    order = sorted(a)
    expected = [100 * (patch["clp"][t] >= 0.4).mean() for t in range(68)]
    assert [a[k] for k in order] == pytest.approx(expected, abs=1e-9)
    # 1 − CLP < 0.6 ⇔ CLP > 0.4: equal up to pixels exactly at 0.4 after float32 rounding
    assert [b[k] for k in order] == pytest.approx(expected, abs=0.05)


def _interior_area(layout, code: str, size_m: float = 1200.0):
    """A box inside one tile and outside every other tile (so one product per acquisition)."""
    tiles = {t.code: t for t in layout.tiles}
    own = sa._tile_polygon_27700(tiles[code])
    others = [sa._tile_polygon_27700(t) for c, t in tiles.items() if c != code]
    free = own
    for o in others:
        free = free.difference(o)
    free = free.buffer(-50.0)
    c = free.representative_point()
    area = box(c.x - size_m / 2, c.y - size_m / 2, c.x + size_m / 2, c.y + size_m / 2).intersection(free)
    assert area.area > 0.5 * size_m**2
    return area


def test_sample_archive_area_fraction_equals_the_generator_truth(sample_servers, sample_archive, reader):
    """Per acquisition, screening over HTTP gives exactly the generator's own pixel counts."""
    spec = sa.SampleSpec.small()
    layout = sa.make_layout(spec)
    area = _interior_area(layout, "30UYC")
    tile = next(t for t in layout.tiles if t.code == "30UYC")
    x, y = sa.tile_positions_27700(tile, slice(0, tile.size_px))
    from shapely import vectorized

    inside = vectorized.contains(area, x, y)
    scenes = served_scenes(sample_servers)
    result = screen_scenes(scenes, area, 27700, PRESETS["scl"], concurrency=8)
    assert result.errors == 0 and len(result.observations) == len(layout.datatakes)
    products = sa._products(layout)  # as the generator wrote them, split datastrips and duplicate included
    checked, combined = 0, {}
    for obs in result.observations:
        d = next(d for d in layout.datatakes if f"{d.satellite}_{d.sensing:%Y%m%dT%H%M%S}" == obs.datatake_id)
        fields = sa.DatatakeFields(layout, d)
        product = sa.Product(d, tile)  # the whole tile, whatever datastrips it came in
        scl = sa.render_scl(layout, fields, product)
        values = scl[inside]
        valid = np.count_nonzero(values > 1)
        assert obs.fractions.area_pixels == np.count_nonzero(inside), obs.datatake_id
        assert obs.fractions.valid_pixels == valid, obs.datatake_id
        if valid:
            assert obs.fractions.cloud_pct == pytest.approx(100 * np.isin(values, [8, 9, 10]).sum() / valid, abs=1e-9)
            assert obs.fractions.shadow_pct == pytest.approx(100 * (values == 3).sum() / valid, abs=1e-9)
            assert obs.fractions.snow_pct == pytest.approx(100 * (values == 11).sum() / valid, abs=1e-9)
            checked += 1
        parts = [p for p in products if p.datatake.index == d.index and p.tile.code == tile.code]
        if len(parts) > 1:  # split datastrips / reprocessed duplicate: one observation, each pixel once
            here = sorted(s.item_id for s in obs.scenes if s.mgrs_tile == tile.code)
            assert here == sorted(p.item_id for p in parts), obs.datatake_id
            each = [np.count_nonzero(sa.render_scl(layout, fields, p)[inside] > 1) for p in parts]
            combined[obs.datatake_id] = (sum(each), valid)
    assert checked > 100
    # both combined acquisitions were seen, and in one of them (the reprocessed duplicate) adding the
    # products' own pixels would have counted the area twice: the equality above has teeth
    assert len(combined) == 2 and any(total == 2 * valid > 0 for total, valid in combined.values()), combined


def test_area_across_the_utm_boundary_counts_each_pixel_once(sample_servers, sample_archive):
    """A 1.2 km area across 0° E, covered by four tiles in two UTM zones: per acquisition, every
    pixel of the area counted once, from whichever product has data there, as the generator drew
    it (sample_truth: the products put on the first one's 20 m lattice with PROJ, in fill order)."""
    import sample_truth as st

    info = json.loads((sample_archive / "archive.json").read_text())
    x0, y0, x1, y1 = info["aoi_27700"]
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    area = box(cx - 600, cy - 600, cx + 600, cy + 600)  # straddles 0° E
    assert PRESETS["scl"].buffer_m == 0 and not PRESETS["scl"].count_shadows
    result = screen_scenes(served_scenes(sample_servers), area, 27700, PRESETS["scl"])
    layout = sa.make_layout(sa.SampleSpec.small())
    products = st.products_by_item(sa, layout)
    both_zones = overlapping = 0
    for obs in result.observations:
        group = [products[s.item_id] for s in obs.scenes]
        fields = sa.DatatakeFields(layout, group[0].datatake)
        first = group[0].tile
        grid = st.lattice_grid(first.epsg, first.x0, first.y0, sa.RES, area, 27700)
        truth = st.truth_on_grid([st.generator_layer(sa, layout, fields, p) for p in st.fill_order(group, group[0])],
                                 *grid, area, 27700)
        assert truth.area_pixels == pytest.approx(3600, abs=20)  # 1.44 km² in 20 m pixels of a slightly turned grid
        got = obs.fractions
        assert (got.area_pixels, got.valid_pixels) == (truth.area_pixels, truth.valid_pixels), obs.datatake_id
        assert got.cloud_pct == pytest.approx(truth.cloud_pct, abs=1e-9), obs.datatake_id
        assert got.shadow_pct == pytest.approx(truth.shadow_pct, abs=1e-9), obs.datatake_id
        assert got.snow_pct == pytest.approx(truth.snow_pct, abs=1e-9), obs.datatake_id
        zones = {products[name].tile.epsg for name, n in truth.filled_by.items() if n}
        both_zones += zones == {32630, 32631}
        overlapping += sum(truth.per_layer_valid.values()) > truth.valid_pixels  # products overlap inside the area
    # the check has teeth: data from both zones in most acquisitions, and overlaps a double count would show
    assert both_zones > 50 and overlapping > 50, (both_zones, overlapping)


def test_acquisition_figures_cover_all_its_products(sample_servers, sample_archive):
    """An acquisition's products are named together and its scene cloud is the generator's own
    class counts over all its products' pixels with data (the reprocessed duplicate once)."""
    from collections import defaultdict

    from cloud_probability.core.screening import acquisition, group_by_datatake

    truth = json.loads((sample_archive / "truth" / "scenes.json").read_text())
    by_datatake = defaultdict(list)
    for item_id, t in truth.items():
        by_datatake[t["datatake"]].append((item_id, t))
    groups = group_by_datatake(served_scenes(sample_servers))
    assert len(groups) == len(by_datatake) and all(len(g) >= 4 for g in groups)
    seen = {"split": 0, "reprocessed": 0}
    for group in groups:
        summary = acquisition(group)
        products = by_datatake[truth[group[0].item_id]["datatake"]]
        assert sorted(summary.item_ids) == sorted(i for i, _ in products)
        assert summary.mgrs_tiles == sorted({t["tile"] for _, t in products})
        assert summary.datetime == min(s.datetime for s in group)
        newest = {}
        for _, t in products:
            newest[t["tile"]] = max(newest.get(t["tile"], ""), t["baseline"])
        kept = [(i, t) for i, t in products if t["baseline"] == newest[t["tile"]]]
        assert sorted(s.item_id for s in summary.distinct) == sorted(i for i, _ in kept)
        seen["split"] += any(t["part"] != "all" for _, t in kept)
        seen["reprocessed"] += len(kept) < len(products)
        cloudy = sum(t["class_counts"][str(c)] for _, t in kept for c in (8, 9, 10))
        data = sum(n for _, t in kept for c, n in t["class_counts"].items() if c != "0")
        assert summary.scene_cloud_pct == pytest.approx(100 * cloudy / data, abs=1e-5), summary.datatake_id
        own = [100 * sum(t["class_counts"][str(c)] for c in (8, 9, 10)) /
               sum(n for c, n in t["class_counts"].items() if c != "0") for _, t in kept]
        assert (summary.scene_cloud_min_pct, summary.scene_cloud_max_pct) == pytest.approx((min(own), max(own)), abs=1e-5)
    assert seen == {"split": 1, "reprocessed": 1}


def test_unreadable_scene_is_marked_not_dropped_nor_clear(sample_servers):
    scenes = served_scenes(sample_servers)[:12]
    broken = scenes[3]
    item = json.loads(broken.item_json())
    item["assets"]["scl"]["href"] = item["assets"]["scl"]["href"].replace("SCL.tif", "MISSING.tif")
    from cloud_probability.core.stac import normalise_item

    scenes[3] = normalise_item(item)
    progress = _Recorder()
    area = shape(broken.geometry).representative_point().buffer(0.002)
    result = screen_scenes(scenes, area, 4326, PRESETS["scl"], progress=progress)
    bad = [o for o in result.observations if o.error]
    assert len(bad) == 1 and bad[0].fractions is None and broken.item_id in [s.item_id for s in bad[0].scenes]
    assert result.observations[-1] is bad[0]  # ranked last
    assert any(broken.item_id in w for w in progress.warnings)


class _Recorder(NullProgress):
    def __init__(self, cancel_after: int | None = None):
        self.warnings, self.steps, self.cancel_after = [], 0, cancel_after

    def warning(self, message):
        self.warnings.append(message)

    def set_progress(self, percent):
        self.steps += 1

    def is_canceled(self):
        return self.cancel_after is not None and self.steps >= self.cancel_after


def test_cancel_stops_the_screening(sample_servers):
    progress = _Recorder(cancel_after=3)
    scenes = served_scenes(sample_servers)
    area = shape(scenes[0].geometry).centroid.buffer(0.003)
    with pytest.raises(Cancelled):
        screen_scenes(scenes, area, 4326, PRESETS["scl"], concurrency=2, progress=progress)
    assert progress.steps < 20


def test_windows_fetch_the_header_and_only_the_tiles_under_the_window(sample_servers, sample_archive):
    """A 300 m window of a 3.2 km tile: each product read costs at least the bytes before its
    first internal tile (the TIFF header and tile index) and the tile under the window's centre,
    and at most the first 16 KiB (the header fetch; the whole file when shorter) plus the span of
    the internal tiles under the window: no other tile, no overview. Offsets from GDAL."""
    from osgeo import gdal
    from pyproj import Transformer
    from shapely.ops import transform

    from cloud_probability.core.reading import clear_http_cache

    scenes = served_scenes(sample_servers)
    layout = sa.make_layout(sa.SampleSpec.small())
    area = _interior_area(layout, "30UYC", size_m=300.0)
    area_lonlat = transform(Transformer.from_crs(27700, 4326, always_xy=True).transform, area)

    def tiles(path, epsg):
        """(offset, bytes) of the full-resolution tiles under the window (one pixel more each
        side), of the one under its centre, and where the first tile of any level starts."""
        ds = gdal.Open(str(path))
        band = ds.GetRasterBand(1)
        x0, res, _, y0 = ds.GetGeoTransform()[:4]
        bw, bh = band.GetBlockSize()
        local = transform(Transformer.from_crs(27700, epsg, always_xy=True).transform, area)
        xmin, ymin, xmax, ymax = local.bounds
        cols = range(max(0, int((xmin - x0) // res) - 1) // bw, min(ds.RasterXSize - 1, int((xmax - x0) // res) + 1) // bw + 1)
        rows = range(max(0, int((y0 - ymax) // res) - 1) // bh, min(ds.RasterYSize - 1, int((y0 - ymin) // res) + 1) // bh + 1)

        def block(b, x, y):
            return int(b.GetMetadataItem(f"BLOCK_OFFSET_{x}_{y}", "TIFF")), int(b.GetMetadataItem(f"BLOCK_SIZE_{x}_{y}", "TIFF"))

        under = [block(band, x, y) for y in rows for x in cols]
        c = local.centroid
        centre = block(band, int((c.x - x0) // res) // bw, int((y0 - c.y) // res) // bh)
        first = min(block(b, x, y)[0] for b in [band] + [band.GetOverview(i) for i in range(band.GetOverviewCount())]
                    for y in range(-(-b.YSize // bh)) for x in range(-(-b.XSize // bw)))
        return under, centre, first

    clear_http_cache()  # earlier tests read these windows: the header cache would answer
    before = sample_servers.cogs.bytes_sent()
    result = screen_scenes(scenes, area, 27700, PRESETS["scl"])
    served = sample_servers.cogs.bytes_sent() - before
    low = high = whole = read = 0
    for obs in result.observations:
        for scene in obs.scenes:
            if not shape(scene.geometry).intersects(area_lonlat):
                continue  # a product of the acquisition that misses the area: never read
            path = sample_archive / scene.item["assets"]["scl"]["href"].split(sample_servers.cogs.url + "/")[-1]
            size = path.stat().st_size
            under, centre, first = tiles(path, scene.epsg)
            low += first + centre[1]
            high += min(size, 16384) + max(o + n for o, n in under) - min(o for o, _ in under)
            whole += size
            read += 1
    assert read > 60 and 0 < result.bytes_fetched <= served * 1.01
    assert low <= served <= high, (low, served, high, whole)


def test_thresholds_keep_errors_and_drop_what_is_asked():
    from cloud_probability.core.masks import Fractions
    from cloud_probability.core.screening import Observation, passes

    def obs(cloud, valid, error=None):
        o = Observation("d", [])
        o.fractions = None if error else Fractions(cloud, 0.0, 0.0, valid, 1, 1)
        o.error = error
        return o

    assert passes(obs(10.0, 100.0), 20, 50) and not passes(obs(30.0, 100.0), 20, 50)
    assert not passes(obs(10.0, 40.0), 20, 50)
    assert passes(obs(None, None, error="404"), 0, 100)  # unreadable: kept and marked
    assert passes(obs(None, 0.0)) and not passes(obs(None, 0.0), 99, 0)  # no data is not clear
    o = obs(12.5, 80.0)
    assert o.nodata_pct == pytest.approx(20.0) and obs(None, None, error="404").nodata_pct is None


@pytest.mark.parametrize("epsg, centre", [(27700, sa.GREENWICH_27700), (3857, (0.0, 6_711_000.0)), (3035, (3_620_000.0, 3_200_000.0))])
def test_areas_reach_utm_through_lon_lat_as_they_would_directly(epsg, centre):
    """Areas reach a WGS 84 / UTM grid through their lon/lat (a cheap transformer); the
    vertices are PROJ's direct transform of the densified area, whatever form the CRS takes."""
    import rasterio.crs
    from pyproj import Transformer
    from shapely.ops import transform

    from cloud_probability.core.reading import _densify, area_in_crs, clear_lookups

    clear_lookups()
    cx, cy = centre
    area = box(cx - 2500, cy - 2500, cx + 2500, cy + 2500)
    for zone in (32630, 32631):
        direct = np.array(transform(Transformer.from_crs(epsg, zone, always_xy=True).transform,
                                    _densify(area)).exterior.coords)
        for crs in (zone, f"EPSG:{zone}", rasterio.crs.CRS.from_epsg(zone)):
            ours = area_in_crs(area, epsg, crs)
            assert np.abs(np.array(ours.exterior.coords) - direct).max() < 1e-6
            assert area_in_crs(area, epsg, crs) is ours  # kept


def test_grid_windows_are_rasterio_windows():
    """grid_around's window (plain affine arithmetic) is rasterio.windows.from_bounds's, pixel
    edges included."""
    from affine import Affine
    from rasterio.windows import from_bounds

    from cloud_probability.core.reading import grid_around

    rng = np.random.default_rng(5)
    transform = Affine(20.0, 0.0, 600000.0, 0.0, -20.0, 5700000.0)
    for i in range(300):
        x0, y0 = 600000 + rng.uniform(0, 100000), 5600000 + rng.uniform(0, 100000)
        w, h = rng.uniform(1, 5000), rng.uniform(1, 5000)
        if i % 3 == 0:  # on pixel edges
            x0, y0, w, h = (round(v / 20) * 20 for v in (x0, y0, w + 20, h + 20))
        grid = grid_around("EPSG:32631", transform, 5490, 5490, box(x0, y0, x0 + w, y0 + h), 32631)
        win = from_bounds(x0, y0, x0 + w, y0 + h, transform)
        c0, r0 = max(0, int(np.floor(win.col_off))), max(0, int(np.floor(win.row_off)))
        c1 = min(5490, int(np.ceil(win.col_off + win.width)))
        r1 = min(5490, int(np.ceil(win.row_off + win.height)))
        assert grid.transform == transform * Affine.translation(c0, r0)
        assert grid.shape == (r1 - r0, c1 - c0)


def test_pixel_centres_across_utm_zones_within_30_micrometres_of_proj():
    from affine import Affine
    from pyproj import Transformer

    from cloud_probability.core.reading import Grid, GridLookup

    for shape_ in ((254, 254), (60, 60), (1000, 700)):
        grid = Grid("EPSG:32631", Affine(20, 0, 300000, 0, -20, 5720000), shape_)
        x, y = GridLookup(grid).coords("EPSG:32630")
        cc, rr = np.meshgrid(np.arange(shape_[1]) + 0.5, np.arange(shape_[0]) + 0.5)
        ex, ey = Transformer.from_crs(32631, 32630, always_xy=True).transform(300000 + cc * 20, 5720000 - rr * 20)
        error = max(np.abs(x - ex).max(), np.abs(y - ey).max())
        assert error < (1e-9 if shape_ == (60, 60) else 3e-5)  # exact up to 64 × 64, lattice beyond
