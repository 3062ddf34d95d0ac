"""core.cog, the two-round-trip COG window reader, against GDAL on the same files served for
real (nginx with Range, and a server that ignores Range), for every layout it claims to read;
layouts it does not read go to GDAL through reading.open_source with the same results."""
from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import BUILD, served_scenes
from rasterio.transform import from_origin
from shapely.geometry import box

from cloud_probability.core import cog
from cloud_probability.core.masks import PRESETS
from cloud_probability.core.reading import ReadError, _GdalSource, _NativeSource, open_source, read_on_grid, Grid
from cloud_probability.core.screening import screen_scenes
from cloud_probability.sampledata import sample_archive as sa

RNG = np.random.default_rng(7)


def _same_as_gdal(url: str, path: Path, windows: int = 4) -> cog.CogFile:
    native = cog.open_cog(url)
    with rasterio.open(path) as ds:
        assert native.crs == ds.crs.to_string()
        assert tuple(native.transform) == tuple(ds.transform)
        assert native.nodata == ds.nodata or (np.isnan(native.nodata) and np.isnan(ds.nodata))
        assert len(native.levels) == len(ds.overviews(1)) + 1
        for _ in range(windows):
            r0, c0 = RNG.integers(0, ds.height - 1), RNG.integers(0, ds.width - 1)
            r1, c1 = RNG.integers(r0 + 1, ds.height + 1), RNG.integers(c0 + 1, ds.width + 1)
            ours, gdal = native.read(r0, r1, c0, c1), ds.read(1, window=((r0, r1), (c0, c1)))
            assert ours.dtype == gdal.dtype and np.array_equal(ours, gdal, equal_nan=ours.dtype.kind == "f")
        for level in range(1, len(native.levels)):
            with rasterio.open(path, OVERVIEW_LEVEL=level - 1) as ov:
                assert tuple(ov.transform) == tuple(native.levels[level].transform)
                assert np.array_equal(native.read(0, ov.height, 0, ov.width, level), ov.read(1), equal_nan=True)
    return native


def test_sample_cogs_read_like_gdal(sample_servers, sample_archive):
    """SCL (uint8, nodata 0) and true-colour bands of the sample, every level, random windows."""
    scenes = served_scenes(sample_servers)
    hrefs = [s.asset_href("scl") for s in scenes[:12]] + [s.asset_href("red") for s in scenes if s.asset_href("red")][:4]
    assert len(hrefs) == 16
    for href in hrefs:
        path = sample_archive / href.split(sample_servers.cogs.url + "/")[-1]
        native = _same_as_gdal(href, path)
        assert native.compression in cog.DEFLATE and len(native.levels) > 1


def _write(path: Path, data: np.ndarray, nodata=None, **options) -> Path:
    profile = dict(driver="GTiff", width=data.shape[1], height=data.shape[0], count=1, dtype=data.dtype.name,
                   crs="EPSG:32631", transform=from_origin(300000.0, 5700000.0, 20.0, 20.0), nodata=nodata,
                   tiled=True, blockxsize=256, blockysize=256, compress="DEFLATE")
    profile.update(options)
    if not profile["tiled"]:
        del profile["blockxsize"], profile["blockysize"]
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
        if profile.get("tiled") and min(data.shape) >= 512:
            dst.build_overviews([2, 4], rasterio.enums.Resampling.nearest)
    return path


def _write_cog(path: Path, data: np.ndarray, **options) -> Path:
    """A COG as GDAL's COG driver lays it out: every IFD and tile index before the first tile."""
    with rasterio.open(path, "w", driver="COG", width=data.shape[1], height=data.shape[0], count=1,
                       dtype=data.dtype.name, crs="EPSG:32631", transform=from_origin(300000.0, 5700000.0, 20.0, 20.0),
                       compress="DEFLATE", overview_resampling="NEAREST", **options) as dst:
        dst.write(data, 1)
    return path


@pytest.fixture(scope="module")
def layouts():
    import shutil

    folder = BUILD / "test-cog-layouts"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rows = np.arange(700)[:, None]
    ramp = (rows * 7 + np.arange(900)[None, :] * 3)
    f32 = (ramp / 97.0).astype(np.float32)
    f32[:40, :50] = np.nan
    sparse = np.zeros((700, 900), np.uint8)
    sparse[300:420, 600:800] = 9
    return {
        "uint8": (_write(folder / "u8.tif", (ramp % 12).astype(np.uint8), nodata=0), True),
        "uint16 predictor 2 big-endian BigTIFF": (_write(
            folder / "u16be.tif", (ramp * 13 % 65000).astype(np.uint16), nodata=0, predictor=2,
            ENDIANNESS="BIG", BIGTIFF="YES"), True),
        "int16 predictor 2": (_write(folder / "i16.tif", (ramp % 3000 - 1500).astype(np.int16), nodata=-9999,
                                     predictor=2), True),
        "float32 NaN nodata": (_write(folder / "f32.tif", f32, nodata=float("nan")), True),
        "uncompressed float64": (_write(folder / "f64.tif", ramp.astype(np.float64), compress="NONE"), True),
        "sparse tiles": (_write(folder / "sparse.tif", sparse, nodata=0, SPARSE_OK="TRUE"), True),
        "many tiles (header past 16 KiB)": (_write_cog(
            folder / "many.tif", np.tile(np.arange(64, dtype=np.uint8), (3000, 47)), blocksize=16), True),
        "large COG": (_write_cog(folder / "large.tif", RNG.integers(0, 12, (4096, 4096), dtype=np.uint8),
                                 blocksize=256, nodata=0), True),
        # what the reader declines (GDAL reads them)
        "float32 predictor 3": (_write(folder / "f32p3.tif", f32, predictor=3), False),
        "LZW": (_write(folder / "lzw.tif", (ramp % 12).astype(np.uint8), compress="LZW"), False),
        "striped": (_write(folder / "strip.tif", (ramp % 12).astype(np.uint8), tiled=False), False),
        "internal mask": (_write(folder / "mask.tif", (ramp % 12).astype(np.uint8)), False),
    }


@pytest.fixture(scope="module")
def layout_server(layouts):
    import servers

    root = next(iter(layouts.values()))[0].parent
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK="YES"):
        with rasterio.open(root / "mask.tif", "r+") as ds:
            mask = np.full((ds.height, ds.width), 255, np.uint8)
            mask[:100, :100] = 0
            ds.write_mask(mask)
    with servers.CogServer(root) as server:
        yield server


@pytest.mark.parametrize("name", [
    "uint8", "uint16 predictor 2 big-endian BigTIFF", "int16 predictor 2", "float32 NaN nodata",
    "uncompressed float64", "sparse tiles", "many tiles (header past 16 KiB)", "large COG",
    "float32 predictor 3", "LZW", "striped", "internal mask",
])
def test_layouts_read_natively_or_by_gdal_with_gdal_results(layouts, layout_server, name):
    path, native = layouts[name]
    url = f"{layout_server.url}/{path.name}"
    if native:
        _same_as_gdal(url, path)
    else:
        with pytest.raises(cog.Unsupported):
            cog.open_cog(url)
    with open_source(url) as source, rasterio.open(path) as ds:
        assert isinstance(source, _NativeSource if native else _GdalSource)
        data = source.read(0, ds.height, 0, ds.width)
        assert np.array_equal(data, ds.read(1), equal_nan=data.dtype.kind == "f")
        assert np.array_equal(source.valid(data, (0, ds.height, 0, ds.width)), ds.read_masks(1) > 0)


def test_header_past_the_first_fetch_costs_one_more_request(layouts, layout_server):
    path, _ = layouts["many tiles (header past 16 KiB)"]
    cog.clear_cache()
    before = layout_server.requests()
    native = cog.open_cog(f"{layout_server.url}/{path.name}")
    assert native.levels[0].offsets.size > 30000 and layout_server.requests() - before == 2


class _NoRangeHandler(http.server.SimpleHTTPRequestHandler):
    """Python's static server: it ignores Range and sends the whole file with 200."""

    def log_message(self, *args):
        pass


def test_server_ignoring_range_still_reads_right(layouts):
    path, _ = layouts["uint16 predictor 2 big-endian BigTIFF"]
    handler = functools.partial(_NoRangeHandler, directory=str(path.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{path.name}"
        native = _same_as_gdal(url, path, windows=2)
        assert native.whole is not None  # the window came from the one whole-file response
    finally:
        server.shutdown()
        server.server_close()


def test_http_errors_name_the_file(layout_server):
    url = f"{layout_server.url}/missing.tif"
    grid = Grid("EPSG:32631", from_origin(300000.0, 5700000.0, 20.0, 20.0), (10, 10))
    with pytest.raises(ReadError, match="missing.tif.*404"):
        read_on_grid(url, grid)
    closed = f"http://127.0.0.1:{_closed_port()}/x.tif"
    with pytest.raises(ReadError, match="x.tif"):
        read_on_grid(closed, grid)


def _closed_port() -> int:
    import servers

    return servers.free_port()


def test_screening_is_the_same_with_gdal_and_fewer_requests(sample_servers, sample_archive, monkeypatch):
    """The whole screening of the sample, natively and with GDAL: identical fractions; the
    native reader makes fewer requests (GDAL also asks each file's size with a HEAD)."""
    scenes = served_scenes(sample_servers)
    x, y = sa.GREENWICH_27700
    area = box(x - 700, y - 700, x + 700, y + 700)  # across the UTM boundary: several products each
    from cloud_probability.core.reading import clear_http_cache

    clear_http_cache()
    r0 = sample_servers.cogs.requests()
    native = screen_scenes(scenes, area, 27700, PRESETS["scl"])
    r_native = sample_servers.cogs.requests() - r0
    monkeypatch.setenv("CLOUDPROB_NATIVE_COG", "NO")
    clear_http_cache()
    r0 = sample_servers.cogs.requests()
    gdal = screen_scenes(scenes, area, 27700, PRESETS["scl"])
    r_gdal = sample_servers.cogs.requests() - r0
    as_dict = lambda result: {o.datatake_id: o.fractions for o in result.observations}  # noqa: E731
    assert native.errors == gdal.errors == 0 and as_dict(native) == as_dict(gdal)
    assert r_native < r_gdal, (r_native, r_gdal)


def test_coarser_resolution_reads_overviews(layouts, layout_server, monkeypatch):
    """A grid coarser than the raster reads the coarsest overview not coarser than it: fewer
    bytes, and the same values natively as through GDAL's OVERVIEW_LEVEL."""
    path, _ = layouts["large COG"]
    url = f"{layout_server.url}/{path.name}"
    x0, y0 = 300000.0 + 20 * 1024, 5700000.0 - 20 * 1024
    fine = Grid("EPSG:32631", from_origin(x0, y0, 20.0, 20.0), (1000, 1000))  # 20 km
    coarse = Grid("EPSG:32631", from_origin(x0, y0, 80.0, 80.0), (250, 250))
    cog.clear_cache()
    cog.reset_counters()
    at_20 = read_on_grid(url, fine, overviews=True)[0]
    fine_bytes = cog.bytes_fetched()
    cog.clear_cache()
    cog.reset_counters()
    at_80 = read_on_grid(url, coarse, overviews=True)[0]
    coarse_bytes = cog.bytes_fetched()
    assert coarse_bytes < 0.2 * fine_bytes, (coarse_bytes, fine_bytes)
    with rasterio.open(path, OVERVIEW_LEVEL=1) as ov:  # 4× = 80 m
        assert ov.res == (80.0, 80.0)
        assert np.array_equal(at_80, ov.read(1, window=((256, 506), (256, 506))))
    with rasterio.open(path) as ds:
        assert np.array_equal(at_20, ds.read(1, window=((1024, 2024), (1024, 2024))))
    # without overviews a coarse pixel is the full-resolution pixel under its centre
    assert np.array_equal(read_on_grid(url, coarse, overviews=False)[0], at_20[2::4, 2::4])
    monkeypatch.setenv("CLOUDPROB_NATIVE_COG", "NO")
    assert np.array_equal(read_on_grid(url, coarse, overviews=True)[0], at_80)


def test_screening_at_a_coarser_resolution_sees_the_same_clouds(sample_servers, sample_archive):
    """Over a 1.6 km area inside one tile: at 20 m each acquisition's shares are those the
    generator drew; at 80 m they are those of the coarsest overview not coarser than 80 m, as
    GDAL decodes it from the same file, each 80 m pixel taking the overview pixel under its
    centre (sample_truth)."""
    import sample_truth as st

    layout = sa.make_layout(sa.SampleSpec.small())
    area = st.interior_box(sa, layout, "30UYC", 1600.0)
    scenes = served_scenes(sample_servers)
    fine = screen_scenes(scenes, area, 27700, PRESETS["scl"], resolution=20.0)
    coarse = screen_scenes(scenes, area, 27700, PRESETS["scl"], resolution=80.0)
    products = st.products_by_item(sa, layout)
    levels_used = set()
    for obs, resolution in [(o, 20.0) for o in fine.observations] + [(o, 80.0) for o in coarse.observations]:
        if obs.grid is None:  # no product of this acquisition meets the area
            assert obs.fractions.valid_pixels == 0
            continue
        group = [products[s.item_id] for s in obs.scenes]
        g = obs.grid
        assert g.resolution == resolution and g.crs == f"EPSG:{group[0].tile.epsg}"
        assert ((g.transform.c - group[0].tile.x0) / 20) % 1 == 0 == ((group[0].tile.y0 - g.transform.f) / 20) % 1
        if resolution == 20.0:
            fields = sa.DatatakeFields(layout, group[0].datatake)
            layers = [st.generator_layer(sa, layout, fields, p) for p in st.fill_order(group, group[0])]
        else:
            layers = []
            for p in st.fill_order(group, group[0]):
                path = sample_archive / p.folder / "SCL.tif"
                if path.exists():  # products without data in the tile were not written
                    sizes = st.overview_levels(path)
                    level = max(i for i, size in enumerate(sizes) if size <= resolution + 1e-6)
                    levels_used.add(sizes[level])
                    layers.append(st.file_layer(p.item_id, path, level))
        truth = st.truth_on_grid(layers, group[0].tile.epsg, g.transform, g.shape, area, 27700)
        got = obs.fractions
        assert (got.area_pixels, got.valid_pixels) == (truth.area_pixels, truth.valid_pixels), (resolution, obs.datatake_id)
        assert got.cloud_pct == pytest.approx(truth.cloud_pct, abs=1e-9), (resolution, obs.datatake_id)
    assert levels_used == {40.0}  # the 160-pixel tiles have one overview, at 40 m
    cf = {o.datatake_id: o.cloud_pct for o in fine.observations if o.cloud_pct is not None}
    cc = {o.datatake_id: o.cloud_pct for o in coarse.observations if o.cloud_pct is not None}
    assert cf.keys() == cc.keys() and len(cf) > 10


def test_headers_are_kept_until_the_cache_is_cleared(sample_servers):
    """Screening the same scenes again (another area) fetches no header: one round trip per
    product instead of two; clear_http_cache() forgets them."""
    from cloud_probability.core.reading import clear_http_cache

    scenes = served_scenes(sample_servers)
    x, y = sa.GREENWICH_27700

    def requests_for(area) -> tuple[int, int]:
        r0 = sample_servers.cogs.requests()
        result = screen_scenes(scenes, area, 27700, PRESETS["scl"])
        assert result.errors == 0
        products = sum(len(o.scenes) for o in result.observations if o.fractions.area_pixels)
        return sample_servers.cogs.requests() - r0, products

    clear_http_cache()
    first, products = requests_for(box(x - 600, y - 600, x + 600, y + 600))
    again, _ = requests_for(box(x - 500, y - 700, x + 700, y + 500))
    # one header request saved per product read (``products`` also counts the few products of
    # an acquisition that miss the area, which are never read)
    assert products > 20 and first - again >= 0.95 * products, (first, again, products)
    clear_http_cache()
    cold, _ = requests_for(box(x - 500, y - 700, x + 700, y + 500))
    assert cold - again >= 0.95 * products, (cold, again, products)


def test_unsigned_planetary_computer_blobs_say_what_to_do():
    from cloud_probability.core.reading import explain

    href = "https://sentinel2l2a01.blob.core.windows.net/sentinel2-l2/31/U/CT/2024/01/02/S2A_MSIL2A/GRANULE/x/SCL_20m.tif"
    assert "SAS token" in explain(href, f"{href}: HTTP 409 Public access is not permitted")
    assert "SAS token" in explain(href, f"{href}: HTTP response code: 403")
    assert explain(href, f"{href}: HTTP 404 Not Found").endswith("404 Not Found")
    dated = href.replace("/x/", "/S2A_MSIL2A_20240403T110621/")  # "403" in the name is not a status
    assert "SAS" not in explain(dated, f"{dated}: HTTP 404 Not Found")
    other = "https://sentinel-cogs.s3.us-west-2.amazonaws.com/x/SCL.tif"
    assert explain(other, f"{other}: HTTP 403 Forbidden") == f"{other}: HTTP 403 Forbidden"


def _libdeflate_in_process() -> bool:
    """Whether libdeflate is loaded in this process (GDAL links it on Debian), seen from the
    process's memory map: independent of core.cog's own search."""
    rasterio.open  # GDAL is loaded with rasterio
    maps = Path("/proc/self/maps")
    if maps.exists():
        return "libdeflate" in maps.read_text()
    import ctypes.util

    return ctypes.util.find_library("deflate") is not None


def _libdeflate_or_skip():
    """Skip where the system has no libdeflate (zlib inflates there); fail where it has one that
    core.cog did not find."""
    import os

    if cog._LIBDEFLATE is not None:
        return
    if os.environ.get("CLOUDPROB_LIBDEFLATE", "YES").upper() in ("NO", "FALSE", "OFF", "0"):
        pytest.skip("libdeflate turned off by CLOUDPROB_LIBDEFLATE")
    assert not _libdeflate_in_process(), "GDAL has libdeflate loaded, but core.cog did not find it"
    pytest.skip("no libdeflate on this system: zlib inflates (checked against GDAL in the zlib case)")


@pytest.mark.parametrize("inflater", ["libdeflate", "zlib"])
@pytest.mark.parametrize("name", ["uint16 predictor 2 big-endian BigTIFF", "float32 NaN nodata", "large COG"])
def test_zlib_and_libdeflate_inflate_alike(layouts, layout_server, monkeypatch, name, inflater):
    """Every tile of every level, inflated by libdeflate and by zlib alone, is what GDAL decodes
    from the same file on disk."""
    path, _ = layouts[name]
    url = f"{layout_server.url}/{path.name}"
    calls = []
    if inflater == "libdeflate":
        _libdeflate_or_skip()
        real = cog._LIBDEFLATE.inflate

        def counted(raw, size):
            calls.append(size)
            return real(raw, size)

        monkeypatch.setattr(cog._LIBDEFLATE, "inflate", counted)
    else:
        monkeypatch.setattr(cog, "_LIBDEFLATE", None)
    cog.clear_cache()
    native = cog.open_cog(url)
    for level in range(len(native.levels)):
        lv = native.levels[level]
        with rasterio.open(path, **({"OVERVIEW_LEVEL": level - 1} if level else {})) as ds:
            expected = ds.read(1)
        got = native.read(0, lv.height, 0, lv.width, level)
        assert got.dtype == expected.dtype and np.array_equal(got, expected, equal_nan=got.dtype.kind == "f"), level
    assert (len(calls) > 0) == (inflater == "libdeflate")


def test_corrupt_tiles_fail_clearly(monkeypatch):
    """Garbage, a wrong checksum, a stream cut before its checksum, and a stream longer or
    shorter than a tile: each an error naming the file, with libdeflate and with zlib alone."""
    import zlib

    data = bytes(range(256)) * 64
    good = zlib.compress(data)
    checksum = zlib.adler32(data).to_bytes(4, "big")
    assert good[-4:] == checksum
    bad = {
        "garbage": good[:40] + b"garbage" + good[47:],
        "checksum": good[:-4] + bytes(b ^ 0xFF for b in checksum),
        "cut before its checksum": good[:-4],
        "longer than a tile": zlib.compress(data + b"x"),
        "shorter than a tile": zlib.compress(data[:-1]),
    }
    for libdeflate in (cog._LIBDEFLATE, None):
        monkeypatch.setattr(cog, "_LIBDEFLATE", libdeflate)
        assert bytes(cog.inflate(good, 16384)) == data
        for what, stream in bad.items():
            with pytest.raises(cog.Unreadable, match=r"x\.tif: corrupt DEFLATE tile"):
                cog.inflate(stream, 16384, "http://127.0.0.1/x.tif")
                pytest.fail(f"{what} ({'libdeflate' if libdeflate else 'zlib'}) gave no error")


@pytest.mark.parametrize("name", ["uint8", "many tiles (header past 16 KiB)", "internal mask", "LZW"])
def test_classes_on_grid_keeps_no_data_whatever_the_rule(layouts, layout_server, name):
    """No data as a nodata value (folded into the lookup table), no nodata at all, and a
    per-dataset mask (GDAL): the classes equal table[value] where GDAL's mask says valid."""
    from cloud_probability.core.reading import classes_on_grid

    path, _ = layouts[name]
    with rasterio.open(path) as ds:
        rows, cols = min(ds.height, 300), min(ds.width, 400)
        data = ds.read(1, window=((0, rows), (0, cols)))
        valid = ds.read_masks(1, window=((0, rows), (0, cols))) > 0
        grid = Grid(ds.crs.to_string(), ds.transform, (rows, cols))
    table = (np.arange(256, dtype=np.uint8) * 7 % 200).astype(np.uint8)
    got = classes_on_grid(f"{layout_server.url}/{path.name}", grid, table, 255)
    assert np.array_equal(got, np.where(valid, table[data], 255))
    assert (~valid).any() == (name in ("uint8", "internal mask"))


def test_libdeflate_decompressors_end_with_their_threads():
    """Each worker thread's decompressor is freed when the thread ends (runs start new pools)."""
    import gc
    import weakref

    _libdeflate_or_skip()
    import zlib

    good = zlib.compress(bytes(4096))
    refs = []

    def work():
        cog.inflate(good, 4096)
        refs.append(weakref.ref(cog._LIBDEFLATE._local.d))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    gc.collect()
    assert len(refs) == 4 and all(r() is None for r in refs)


@pytest.mark.parametrize("catalogue, href, allowed", [
    (None, "/data/S2/SCL.tif", True),  # made on this machine: anywhere but the never-places
    (None, "http://127.0.0.1:8080/SCL.tif", True),
    (None, "http://169.254.169.254/SCL.tif", False),
    ("../catalog.json", "file:///data/SCL.tif", True),  # a catalogue on disk
    ("https://earth-search.aws.element84.com/v1", "https://sentinel-cogs.s3.us-west-2.amazonaws.com/x/SCL.tif", True),
    ("https://earth-search.aws.element84.com/v1", "s3://sentinel-cogs/x/SCL.tif", True),
    ("https://earth-search.aws.element84.com/v1", "gs://bucket/x/SCL.tif", True),
    ("https://earth-search.aws.element84.com/v1", "/vsis3/sentinel-cogs/x/SCL.tif", False),
    ("https://earth-search.aws.element84.com/v1", "C:/data/SCL.tif", False),
    ("https://earth-search.aws.element84.com/v1", "ftp://example.com/SCL.tif", False),
    ("https://earth-search.aws.element84.com/v1", "http://[::1]/SCL.tif", False),
    ("https://earth-search.aws.element84.com/v1", "http://192.168.1.5/SCL.tif", False),
    ("http://192.168.1.2/stac", "http://192.168.1.5/SCL.tif", True),  # an office catalogue, its own network
    ("http://192.168.1.2/stac", "http://127.0.0.1/SCL.tif", False),
    ("http://localhost:8080/", "http://127.0.0.1:9000/SCL.tif", True),
    ("http://localhost:8080/", "http://10.0.0.7/SCL.tif", True),
    ("http://localhost:8080/", "/data/SCL.tif", False),
])
def test_check_href_reads_only_from_the_catalogues_kind_of_place(monkeypatch, catalogue, href, allowed):
    from cloud_probability.core.reading import Catalogue, RefusedAsset, check_href

    monkeypatch.delenv("CLOUDPROB_ALLOW_LOCAL_ASSETS", raising=False)
    try:
        check_href(href, Catalogue(catalogue))
        refused = None
    except RefusedAsset as exc:
        refused = str(exc)
    assert (refused is None) == allowed, refused
    if refused:
        assert refused.startswith(f"{href}: refused: ")


def test_an_href_remembers_its_scene_s_catalogue_through_pickling():
    import pickle

    from cloud_probability.core.reading import Catalogue, Href, asset_href, catalogue_kind, catalogue_of
    from cloud_probability.core.stac import normalise_item

    item = {"type": "Feature", "id": "x", "properties": {"datetime": "2024-01-01T00:00:00Z"},
            "assets": {"scl": {"href": "https://bucket/x/SCL.tif"}},
            "links": [{"rel": "self", "href": "https://stac.example/v1/collections/c/items/x"},
                      {"rel": "root", "href": "https://stac.example/v1/"}]}
    scene = normalise_item(item)
    assert catalogue_of(scene) == Catalogue("https://stac.example/v1/")
    assert catalogue_kind(catalogue_of(normalise_item({**item, "links": [{"rel": "root", "href": "./catalog.json"}]}))) == "local"
    href = asset_href(scene, "scl")
    again = pickle.loads(pickle.dumps(href))
    assert isinstance(again, Href) and again == href and again.catalogue == Catalogue("https://stac.example/v1/")
