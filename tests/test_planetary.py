"""Planetary Computer (issue 17, item 3): SAS-signed reads of Azure blobs, and s3:// through GDAL.

A loopback token service answers like Planetary Computer's (``/api/sas/v1/token/{account}/
{container}`` → ``{"msft:expiry", "token"}``, 429 with ``Retry-After`` when told to), and a
loopback blob server with Range support answers like Azure Blob Storage: 403 for a request
without a token, with a token it did not issue, for another container, or after the token's
expiry. Both are the standard library's ``http.server`` in threads, started by this module and
stopped at its end. The blobs are COGs of the sample archive; the items are Planetary Computer's
real item (``pc_item_…T06VVN….json``) made to describe them: its property and asset names, its
links to Planetary Computer's STAC API, hrefs on the blob server.

The catalogue is Planetary Computer's (a public address) and the blob server is this machine,
so the tests allow local assets explicitly (``CLOUDPROB_ALLOW_LOCAL_ASSETS=YES``, as
test_faults.py does) and point the signing at loopback: ``CLOUDPROB_SAS_TOKEN_URL`` and
``CLOUDPROB_SAS_BLOB_HOSTS``. Expected values come from the COG files read directly with rasterio.
"""
from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import os
import pickle
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import numpy as np
import pytest
import rasterio
from conftest import BUILD
from rasterio.transform import Affine

from cloud_probability.core import planetary
from cloud_probability.core.masks import PRESETS
from cloud_probability.core.reading import (
    Catalogue, Grid, Href, ReadError, catalogue_of, catalogue_signer, classes_on_grid, clear_http_cache, read_on_grid, vsi_path,
)
from cloud_probability.core.stac import normalise_item

ACCOUNT, CONTAINER = "sentinel2l2a01", "sentinel2-l2"  # as in Planetary Computer's real hrefs
PC_ITEM = "planetary_computer_stac/pc_item_S2B_MSIL2A_20190629T212529_R043_T06VVN_20201006T080531.json"
SECRET = b"loopback storage account key"
N_SCENES = 8


# --- the loopback token service and blob server ----------------------------------------------

def _iso(when: datetime) -> str:
    return when.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _signature(account: str, container: str, expiry: str) -> str:
    mac = hmac.new(SECRET, f"{account}\n{container}\n{expiry}".encode(), hashlib.sha256).digest()
    return base64.b64encode(mac).decode()


class Sas:
    """A token service and a blob server on 127.0.0.1 (two ports, two servers)."""

    def __init__(self, root: Path):
        self.root = root
        self.life_s = 3600.0  # of the tokens issued
        self.throttle: list[str] = []  # Retry-After values of 429 answers given before the next token
        self.forge = False  # issue tokens the storage does not accept (a service of another storage account)
        self.tokens: list[tuple[float, str, str, int]] = []  # (time, account, container, status)
        self.blobs: list[tuple[str, str, str | None, int]] = []  # (method, blob, token expiry or None, status)
        self.lock = threading.Lock()
        self._token_server = self._serve(self._token_handler())
        self._blob_server = self._serve(self._blob_handler())

    @staticmethod
    def _serve(handler) -> ThreadingHTTPServer:
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return server

    @property
    def token_url(self) -> str:
        return f"http://127.0.0.1:{self._token_server.server_address[1]}/api/sas/v1/token"

    @property
    def blob_host(self) -> str:
        return f"127.0.0.1:{self._blob_server.server_address[1]}"

    def href(self, blob: str, container: str = CONTAINER) -> str:
        return f"http://{self.blob_host}/{ACCOUNT}/{container}/{blob}"

    def issue(self, account: str, container: str) -> tuple[str, str]:
        expiry = _iso(datetime.now(timezone.utc) + timedelta(seconds=self.life_s))
        token = urlencode([("se", expiry), ("sp", "rl"), ("sv", "2021-06-08"), ("sr", "c"),
                           ("sig", _signature(account + "x" * self.forge, container, expiry))])
        return token, expiry

    def blob_gets(self, status: int | None = None) -> list:
        with self.lock:
            return [b for b in self.blobs if status is None or b[3] == status]

    def close(self) -> None:
        for server in (self._token_server, self._blob_server):
            server.shutdown()
            server.server_close()

    def _token_handler(self):
        sas = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                parts = self.path.split("?", 1)[0].split("/")
                if len(parts) != 7 or parts[1:5] != ["api", "sas", "v1", "token"]:
                    return self._answer(404, b'{"detail": "Not Found"}')
                account, container = parts[5], parts[6]
                with sas.lock:
                    wait = sas.throttle.pop(0) if sas.throttle else None
                    sas.tokens.append((time.monotonic(), account, container, 429 if wait else 200))
                if wait:
                    return self._answer(429, b'{"detail": "Rate limit exceeded"}', {"Retry-After": wait})
                token, expiry = sas.issue(account, container)
                self._answer(200, json.dumps({"msft:expiry": expiry, "token": token}).encode())

            def _answer(self, status, body, headers=None):
                self.send_response(status)  # with a Date header, as every HTTP server sends
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

        return Handler

    def _blob_handler(self):
        sas = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self._blob(head=True)

            def do_GET(self):
                self._blob(head=False)

            def _refuse(self, blob, expiry, code, message):
                self._log(blob, expiry, 403)
                body = (f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code>'
                        f"<Message>{message}</Message></Error>").encode()
                self.send_response(403, "Server failed to authenticate the request")
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _log(self, blob, expiry, status):
                with sas.lock:
                    sas.blobs.append((self.command, blob, expiry, status))

            def _blob(self, head: bool):
                parts = urlsplit(self.path)
                segments = parts.path.lstrip("/").split("/", 2)
                query = parse_qs(parts.query)
                blob = segments[2] if len(segments) == 3 else ""
                expiry = query.get("se", [None])[0]
                if "sig" not in query:
                    return self._refuse(blob, None, "NoAuthenticationInformation", "No SAS token")
                if len(segments) != 3 or not hmac.compare_digest(
                        query["sig"][0], _signature(segments[0], segments[1], expiry or "")):
                    return self._refuse(blob, expiry, "AuthenticationFailed", "Signature did not match")
                if datetime.fromisoformat(expiry.replace("Z", "+00:00")) <= datetime.now(timezone.utc):
                    return self._refuse(blob, expiry, "AuthenticationFailed", "Signed expiry time has passed")
                path = sas.root / blob
                if not path.is_file():
                    self._log(blob, expiry, 404)
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = path.read_bytes()
                status, first, last = 200, 0, len(data) - 1
                ranged = self.headers.get("Range", "")
                if ranged.startswith("bytes="):
                    a, _, b = ranged[6:].partition("-")
                    first, last = int(a), min(int(b) if b else len(data) - 1, len(data) - 1)
                    status = 206
                self._log(blob, expiry, status)
                self.send_response(status)
                self.send_header("Content-Length", str(last - first + 1))
                self.send_header("Accept-Ranges", "bytes")
                if status == 206:
                    self.send_header("Content-Range", f"bytes {first}-{last}/{len(data)}")
                self.end_headers()
                if not head:
                    self.wfile.write(data[first:last + 1])

        return Handler


@pytest.fixture(scope="module")
def sas(sample_archive):
    server = Sas(sample_archive)
    yield server
    server.close()


@pytest.fixture()
def signing(sas, monkeypatch):
    """Signing pointed at the loopback services; every test starts with no token and no cache."""
    monkeypatch.setenv(planetary.TOKEN_URL_ENV, sas.token_url)
    monkeypatch.setenv(planetary.BLOB_HOSTS_ENV, sas.blob_host)
    monkeypatch.setenv("CLOUDPROB_ALLOW_LOCAL_ASSETS", "YES")
    monkeypatch.delenv("CLOUDPROB_NATIVE_COG", raising=False)
    sas.life_s, sas.throttle, sas.forge = 3600.0, [], False
    with sas.lock:
        sas.tokens.clear()
        sas.blobs.clear()
    planetary.clear_tokens()
    clear_http_cache()
    yield sas
    planetary.clear_tokens()
    clear_http_cache()


# --- Planetary Computer items describing the sample's COGs -----------------------------------

def _sample_items(sample_archive: Path, truecolour: bool = False) -> list[dict]:
    """The first N_SCENES items of one MGRS tile (one product per acquisition), with true colour if asked."""
    items = json.loads((sample_archive / "items" / "items.json").read_text())["features"]
    tile = [i for i in items if i["properties"].get("grid:code") == "MGRS-30UYC"
            and (not truecolour or "red" in i["assets"])]
    chosen, seen = [], set()
    for item in tile:
        if item["properties"]["s2:datatake_id"] not in seen:
            seen.add(item["properties"]["s2:datatake_id"])
            chosen.append(item)
    return chosen[:N_SCENES]


def _pc_item(realdata: Path, sample: dict, href) -> dict:
    """Planetary Computer's real item, describing the sample item's product: PC's property
    names (``s2:mgrs_tile``, ``proj:epsg``…), asset names (``SCL``, ``B04``…), links."""
    item = copy.deepcopy(json.loads((realdata / PC_ITEM).read_text()))
    props = sample["properties"]
    item["id"] = sample["id"]
    item["geometry"], item["bbox"] = sample["geometry"], sample["bbox"]
    for name in ("datetime", "platform", "eo:cloud_cover", "s2:datatake_id", "s2:product_uri",
                 "s2:processing_baseline", "s2:granule_id", "s2:datastrip_id"):
        if name in props:
            item["properties"][name] = props[name]
    item["properties"]["s2:mgrs_tile"] = "30UYC"
    item["properties"]["proj:epsg"] = 32630
    codes = {"scl": "SCL", "red": "B04", "green": "B03", "blue": "B02"}
    assets = {}
    for name, code in codes.items():
        if name in sample["assets"]:
            ours = sample["assets"][name]
            assets[code] = {k: v for k, v in item["assets"][code].items() if not k.startswith("proj:")}
            assets[code].update({k: v for k, v in ours.items() if k.startswith("proj:")}, href=href(ours["href"]))
    item["assets"] = assets
    return item


def _scenes(realdata, sample_archive, sas, truecolour=False, local=False):
    """Planetary Computer scenes of the sample's COGs: hrefs on the blob server, or (``local``)
    the files themselves in items with no links (a catalogue on this computer, read by GDAL)."""
    out = []
    for sample in _sample_items(sample_archive, truecolour):
        if local:
            item = _pc_item(realdata, sample, lambda rel: str(sample_archive / rel))
            item["links"] = []
        else:
            item = _pc_item(realdata, sample, sas.href)
        out.append(normalise_item(item))
    return out


def _native_grid(path: Path) -> Grid:
    with rasterio.open(path) as ds:
        return Grid(ds.crs, ds.transform, (ds.height, ds.width))


def _local_path(sample_archive: Path, href: str) -> Path:
    return sample_archive / href.split(f"/{ACCOUNT}/{CONTAINER}/", 1)[1]


# --- the catalogue decides --------------------------------------------------------------------

def test_planetary_computer_items_are_signed_and_earth_search_items_are_not(realdata, monkeypatch):
    """Real items: Planetary Computer's (asset SCL, no 'cloud', blob hrefs) sign with its token
    service, per the account and container in the href; Earth Search's do not sign."""
    for name in (planetary.TOKEN_URL_ENV, planetary.SDK_TOKEN_URL_ENV, planetary.BLOB_HOSTS_ENV):
        monkeypatch.delenv(name, raising=False)
    page_path = realdata / "planetary_computer_stac" / "pc_search_sentinel-2-l2a_2019-01-01_33items.json"
    page = json.loads(page_path.read_text())
    items = [json.loads((realdata / PC_ITEM).read_text())] + page["features"]
    for item in items:
        scene = normalise_item(item)
        href = scene.asset_href("scl")
        assert isinstance(href, Href) and href == item["assets"]["SCL"]["href"] and href.endswith("_SCL_20m.tif")
        assert scene.asset_href("cloud") is None and scene.collection == "sentinel-2-l2a"
        catalogue = href.catalogue
        assert catalogue.url.rstrip("/") == planetary.STAC_URL
        assert catalogue_signer(catalogue) == planetary.Signing(planetary.TOKEN_URL, ("*.blob.core.windows.net",))
        assert catalogue_signer(catalogue).applies(href) and catalogue_signer(catalogue).applies(scene.asset_href("B04"))
        # the planetary-computer package's rule: account = first label of the host, container = first path segment
        host, path = urlsplit(href).hostname, urlsplit(href).path
        assert catalogue_signer(catalogue).container_of(href) == (host.split(".")[0], path.split("/")[1])
        assert not catalogue_signer(catalogue).applies(item["assets"]["tilejson"]["href"])  # PC's API, not a blob
    es = json.loads((realdata / "earthsearch_stac" / "es_v1_search_cc-lte-40_2024-08-09_page1.json").read_text())
    scene = normalise_item(es["features"][0])
    assert catalogue_signer(catalogue_of(scene)) is None and catalogue_signer(scene.asset_href("scl").catalogue) is None
    signed = planetary.Signing(planetary.TOKEN_URL)
    already = items[0]["assets"]["SCL"]["href"] + "?se=2030-01-01&sig=abc"
    assert not signed.applies(already)  # an href signed by whoever made the item is read as it is


def test_hostile_blob_names_are_refused_before_any_token_request(signing):
    before = len(signing.tokens)
    blob = f"http://{signing.blob_host}"
    grid = Grid("EPSG:32630", Affine(20, 0, 0, 0, -20, 0), (2, 2))
    for href in (signing.href("x.tif", container="Bad_Container"), f"{blob}/ab/sentinel2-l2/x.tif",
                 f"{blob}/{ACCOUNT}/..%2f..%2fadmin/x.tif", f"{blob}/{ACCOUNT}/"):
        with pytest.raises(ReadError) as caught:
            read_on_grid(Href(href, Catalogue(planetary.STAC_URL)), grid)
        assert "not an Azure blob address (storage account/container/blob) that can be signed" in str(caught.value)
    assert len(signing.tokens) == before


# --- reads through the signed path -------------------------------------------------------------

def test_the_blob_server_refuses_unsigned_foreign_and_expired_requests(signing, sample_archive, realdata):
    """What makes the other tests able to fail: without a valid, unexpired token for the
    container, the blob server answers 403; a catalogue that does not sign gets a named error."""
    scene = _scenes(realdata, sample_archive, signing)[0]
    href = scene.asset_href("scl")
    token, _ = signing.issue(ACCOUNT, "another-container")
    signing.life_s = 0.5
    expired, _ = signing.issue(ACCOUNT, CONTAINER)
    time.sleep(0.6)
    for url in (str(href), f"{href}?{token}", f"{href}?{expired}"):
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(url, timeout=5)
        assert caught.value.code == 403
    signing.life_s = 3600.0
    good, _ = signing.issue(ACCOUNT, CONTAINER)
    with urllib.request.urlopen(f"{href}?{good}", timeout=5) as answer:
        assert answer.status == 200 and answer.read() == _local_path(sample_archive, href).read_bytes()

    unsigned = Href(str(href), Catalogue(f"http://127.0.0.1:{signing.blob_host.split(':')[1]}/stac", None))
    with pytest.raises(ReadError) as caught:
        read_on_grid(unsigned, _native_grid(_local_path(sample_archive, href)))
    assert str(caught.value).startswith(f"{href}: HTTP 403")


@pytest.mark.parametrize("reader", ["native", "gdal"])
def test_signed_reads_equal_the_files(signing, sample_archive, realdata, monkeypatch, reader):
    """Every scene's SCL through the signed path, on its own grid, is the file read directly;
    one token serves every read of the container; no request went unsigned."""
    if reader == "gdal":
        monkeypatch.setenv("CLOUDPROB_NATIVE_COG", "NO")
    table = np.arange(256, dtype=np.uint8)
    start = len(signing.blob_gets())
    scenes = _scenes(realdata, sample_archive, signing)
    for scene in scenes:
        href = scene.asset_href("SCL")
        path = _local_path(sample_archive, href)
        grid = _native_grid(path)
        with rasterio.open(path) as ds:
            truth = ds.read(1)
        assert np.array_equal(classes_on_grid(href, grid, table, 0), truth)
        values, valid = read_on_grid(href, grid)
        assert np.array_equal(values, truth) and np.array_equal(valid, truth != 0)
    requests = signing.blob_gets()[start:]
    assert len(requests) >= len(scenes) and all(status in (200, 206) for _, _, _, status in requests)
    assert [(a, c, s) for _, a, c, s in signing.tokens] == [(ACCOUNT, CONTAINER, 200)]


def test_screening_a_small_area_through_signing_equals_the_files(signing, sample_archive, realdata):
    from shapely.geometry import box

    from cloud_probability.core.screening import screen_scenes

    scenes = _scenes(realdata, sample_archive, signing)
    with rasterio.open(_local_path(sample_archive, scenes[0].asset_href("scl"))) as ds:
        left, bottom, right, top = ds.bounds
    area = box(left + 700, bottom + 900, left + 1900, bottom + 2300)  # 1.2 × 1.4 km inside the tile, EPSG:32630
    signed = screen_scenes(scenes, area, 32630, PRESETS["scl"], concurrency=8)
    local = screen_scenes(_scenes(realdata, sample_archive, signing, local=True), area, 32630, PRESETS["scl"],
                          concurrency=8)
    assert signed.errors == local.errors == 0 and len(signed.observations) == N_SCENES
    got = {o.datatake_id: o.fractions for o in signed.observations}
    assert got == {o.datatake_id: o.fractions for o in local.observations}
    assert len({f.cloud_pct for f in got.values()}) > 2  # scenes that differ: a real comparison
    assert [s for _, _, _, s in signing.tokens] == [200]  # eight acquisitions at once, one token


def test_a_frequency_tile_through_signing_counts_what_the_files_hold(signing, sample_archive, realdata, tmp_path):
    """The cloud frequency (measure 0) of N_SCENES acquisitions on the tile's own grid: valid
    = SCL not in {0, 1}, cloudy = SCL in {8, 9, 10}, counted here from the files with rasterio."""
    from cloud_probability.core.frequency import cloud_frequency

    scenes = _scenes(realdata, sample_archive, signing)
    paths = [_local_path(sample_archive, s.asset_href("scl")) for s in scenes]
    grid = _native_grid(paths[0])
    stack = []
    for path in paths:
        with rasterio.open(path) as ds:
            assert ds.transform == grid.transform
            stack.append(ds.read(1))
    stack = np.stack(stack)
    valid_truth = (~np.isin(stack, (0, 1))).sum(axis=0)
    cloudy_truth = np.isin(stack, (8, 9, 10)).sum(axis=0)
    outputs = {k: str(tmp_path / f"{k}.tif") for k in ("probability", "valid", "cloudy")}
    result = cloud_frequency(scenes, grid, PRESETS["scl"], outputs, tile_px=128, concurrency=4,
                             cache_dir=tmp_path / "cache", measure="frequency")
    assert result.acquisitions == N_SCENES
    with rasterio.open(outputs["valid"]) as v, rasterio.open(outputs["cloudy"]) as c:
        assert np.array_equal(v.read(1), valid_truth) and np.array_equal(c.read(1), cloudy_truth)
    assert cloudy_truth.sum() > 0 and (valid_truth < N_SCENES).any()


def test_a_composite_through_signing_equals_the_one_from_the_files(signing, sample_archive, realdata, tmp_path):
    from cloud_probability.core.composite import clear_composite

    scenes = _scenes(realdata, sample_archive, signing, truecolour=True)
    assert len(scenes) >= 3 and all(s.asset_href("B04") for s in scenes)
    grid = _native_grid(_local_path(sample_archive, scenes[0].asset_href("red")))
    signed = clear_composite(scenes, grid, PRESETS["scl"], str(tmp_path / "signed.tif"))
    local = clear_composite(_scenes(realdata, sample_archive, signing, truecolour=True, local=True), grid,
                            PRESETS["scl"], str(tmp_path / "local.tif"))
    with rasterio.open(signed.path) as a, rasterio.open(local.path) as b:
        ours, theirs = a.read(), b.read()
    assert ours.shape == (3,) + grid.shape and np.array_equal(ours, theirs) and (ours > 0).mean() > 0.5


# --- tokens: refresh, rate limits, messages, other processes ----------------------------------

def test_a_token_is_replaced_before_it_expires(signing, sample_archive, realdata):
    """Tokens of 3 s: the one fetched first is replaced after about three quarters of its life,
    so no request ever reaches the blob server with an expired token (it would answer 403)."""
    signing.life_s = 3.0
    scene = _scenes(realdata, sample_archive, signing)[0]
    href = scene.asset_href("scl")
    grid = _native_grid(_local_path(sample_archive, href))
    first, _ = read_on_grid(href, grid)
    assert len(signing.tokens) == 1
    first_expiry = signing.blob_gets()[-1][2]
    time.sleep(2.4)  # past the refresh point (at most 2.25 s), before the expiry (3 s)
    clear_http_cache()  # the header again too: every request of the second read needs the token
    start = len(signing.blob_gets())
    second, _ = read_on_grid(href, grid)
    assert np.array_equal(first, second)
    assert [s for _, _, _, s in signing.tokens] == [200, 200]
    later = signing.blob_gets()[start:]
    assert later and all(expiry != first_expiry and status == 206 for _, _, expiry, status in later)
    assert not signing.blob_gets(403)
    time.sleep(max(0.0, (datetime.fromisoformat(first_expiry.replace("Z", "+00:00"))
                         - datetime.now(timezone.utc)).total_seconds()) + 0.1)
    old = f"{href}?" + urlencode([("se", first_expiry), ("sp", "rl"), ("sv", "2021-06-08"), ("sr", "c"),
                                  ("sig", _signature(ACCOUNT, CONTAINER, first_expiry))])
    with pytest.raises(urllib.error.HTTPError) as caught:  # the first token was indeed short-lived
        urllib.request.urlopen(old, timeout=5)
    assert caught.value.code == 403


def test_a_token_refused_by_the_storage_is_replaced_once(signing, sample_archive, realdata):
    """A token the storage no longer accepts (revoked, or expired by another clock): one 403,
    a new token, the read goes on."""
    scene = _scenes(realdata, sample_archive, signing)[0]
    href = scene.asset_href("scl")
    grid = _native_grid(_local_path(sample_archive, href))
    signing.life_s = 0.3
    value, expiry = signing.issue(ACCOUNT, CONTAINER)  # a token of the service, believed good for an hour
    with planetary._GUARD:
        planetary._TOKENS[(signing.token_url, ACCOUNT, CONTAINER)] = planetary.Token(
            value, datetime.fromisoformat(expiry.replace("Z", "+00:00")), time.monotonic() + 3600, 3600)
    time.sleep(0.4)
    signing.life_s = 3600.0
    values, _ = read_on_grid(href, grid)
    with rasterio.open(_local_path(sample_archive, href)) as ds:
        assert np.array_equal(values, ds.read(1))
    assert len(signing.blob_gets(403)) == 1


def test_tokens_the_storage_never_accepts_are_named(signing, sample_archive, realdata):
    """Two tokens (the first and a fresh one) refused: the product is unreadable, and the message
    says the storage refused the service's tokens; the token is not in it."""
    signing.forge = True
    scene = _scenes(realdata, sample_archive, signing)[0]
    href = scene.asset_href("scl")
    with pytest.raises(ReadError) as caught:
        read_on_grid(href, _native_grid(_local_path(sample_archive, href)))
    assert str(caught.value) == (f"{href}: HTTP 403 Server failed to authenticate the request — the storage refused "
                                 f"the SAS token from {signing.token_url}, also a new one: the token service may not "
                                 "give tokens for this container")
    assert [s for *_, s in signing.tokens] == [200, 200] and len(signing.blob_gets(403)) == 2


def test_a_429_from_the_token_service_is_waited_out(signing, sample_archive, realdata):
    signing.throttle = ["1"]
    scene = _scenes(realdata, sample_archive, signing)[0]
    href = scene.asset_href("scl")
    values, _ = read_on_grid(href, _native_grid(_local_path(sample_archive, href)))
    with rasterio.open(_local_path(sample_archive, href)) as ds:
        assert np.array_equal(values, ds.read(1))
    (t429, *_, s429), (t200, *_, s200) = signing.tokens
    assert (s429, s200) == (429, 200)
    assert t200 - t429 >= 1.0  # Retry-After: 1 obeyed (the server's own clock)


def test_a_rate_limit_longer_than_the_deadline_is_a_clear_error(signing, sample_archive, realdata, monkeypatch):
    """Retry-After: 3600 is not slept: the read fails at once, names the product, the token
    service, the 429 and what raises the limit; the other products are read."""
    monkeypatch.setenv("CLOUDPROB_HTTP_TIMEOUT", "5")
    from shapely.geometry import box

    from cloud_probability.core.screening import screen_scenes

    scenes = _scenes(realdata, sample_archive, signing)[:3]
    signing.throttle = ["3600"]
    with rasterio.open(_local_path(sample_archive, scenes[0].asset_href("scl"))) as ds:
        left, bottom, _, _ = ds.bounds
    result = screen_scenes(scenes, box(left + 700, bottom + 900, left + 1900, bottom + 2300), 32630, PRESETS["scl"],
                           concurrency=1)
    failed = [o for o in result.observations if o.error]
    assert len(failed) == 1 and len(result.observations) == 3
    error = failed[0].error
    href = failed[0].scenes[0].asset_href("scl")
    assert error.startswith(f"{href}: no SAS token for {ACCOUNT}/{CONTAINER} from {signing.token_url}/{ACCOUNT}/"
                            f"{CONTAINER}: HTTP 429")
    assert planetary.SUBSCRIPTION_KEY_ENV in error and "sig=" not in error


def test_no_message_shows_the_token(signing, sample_archive, realdata, monkeypatch):
    scene = _scenes(realdata, sample_archive, signing)[0]
    missing = Href(signing.href("30/U/YC/nothing-here/SCL.tif"), scene.asset_href("scl").catalogue)
    grid = Grid("EPSG:32630", Affine(20, 0, 600000, 0, -20, 5700000), (4, 4))
    for native in ("YES", "NO"):
        monkeypatch.setenv("CLOUDPROB_NATIVE_COG", native)
        with pytest.raises(ReadError) as caught:
            read_on_grid(missing, grid)
        message = str(caught.value)
        assert message.startswith(str(missing)) and "sig=" not in message and "se=" not in message, message
    assert signing.blob_gets(404)


def _read_pickled(payload: bytes) -> bytes:
    """Run in another process (as a Dask worker would): unpickle an href and a grid, read."""
    code = ("import pickle, sys; from cloud_probability.core.reading import read_on_grid; "
            "href, grid = pickle.loads(sys.stdin.buffer.read()); values, _ = read_on_grid(href, grid); "
            "sys.stdout.buffer.write(values.tobytes())")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLOUDPROB_SAS_", "PC_SDK_"))}
    env["PYTHONPATH"] = str(BUILD / "plugins")
    done = subprocess.run([sys.executable, "-c", code], input=payload, capture_output=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return done.stdout


def test_signing_travels_with_a_pickled_href_to_another_process(signing, sample_archive, realdata):
    """The worker has no signing settings of its own: the href's catalogue carries them, and the
    worker asks the token service for its own token."""
    scene = _scenes(realdata, sample_archive, signing)[0]
    href = scene.asset_href("scl")
    grid = _native_grid(_local_path(sample_archive, href))
    payload = pickle.dumps((href, grid))
    assert b"sig=" not in payload and signing.token_url.encode() in payload
    before = len(signing.tokens)
    values = np.frombuffer(_read_pickled(payload), np.uint8).reshape(grid.shape)
    with rasterio.open(_local_path(sample_archive, href)) as ds:
        assert np.array_equal(values, ds.read(1))
    assert len(signing.tokens) == before + 1


# --- s3:// through GDAL ---------------------------------------------------------------------

class S3:
    """An S3 endpoint on loopback for one requester-pays bucket: it wants AWS Signature V4 with
    the test's access key and ``x-amz-request-payer: requester`` (403 otherwise, as AWS does)."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.requests = files, []
        s3 = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self._answer(head=True)

            def do_GET(self):
                self._answer(head=False)

            def _answer(self, head):
                auth = self.headers.get("Authorization", "")
                payer = self.headers.get("x-amz-request-payer")
                s3.requests.append((self.command, self.path, auth.split(",")[0], payer))
                key = urlsplit(self.path).path.lstrip("/")
                if not auth.startswith("AWS4-HMAC-SHA256 Credential=AKIDLOOPBACK/") or payer != "requester":
                    body = b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
                    self.send_response(403)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    if not head:
                        self.wfile.write(body)
                    return
                data = s3.files.get(key)
                if data is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                first, last, status = 0, len(data) - 1, 200
                ranged = self.headers.get("Range", "")
                if ranged.startswith("bytes="):
                    a, _, b = ranged[6:].partition("-")
                    first, last, status = int(a), min(int(b) if b else len(data) - 1, len(data) - 1), 206
                self.send_response(status)
                self.send_header("Content-Length", str(last - first + 1))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {first}-{last}/{len(data)}")
                self.end_headers()
                if not head:
                    self.wfile.write(data[first:last + 1])

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_s3_hrefs_become_gdal_vsis3_paths():
    assert vsi_path("s3://sentinel-s2-l2a/tiles/30/U/YC/2024/1/2/0/R20m/SCL.jp2") == \
        "/vsis3/sentinel-s2-l2a/tiles/30/U/YC/2024/1/2/0/R20m/SCL.jp2"
    assert vsi_path(Href("s3://b/k.tif", Catalogue(planetary.STAC_URL))) == "/vsis3/b/k.tif"


def test_a_requester_pays_s3_bucket_is_read_with_the_users_credentials(sample_archive, monkeypatch):
    """GDAL's /vsis3/ against a loopback endpoint, with the user's credentials and
    AWS_REQUEST_PAYER=requester from the environment: the window is the file's; without the
    requester-pays setting the bucket refuses (403) and the product is named."""
    rel = _sample_items(sample_archive)[0]["assets"]["scl"]["href"]
    path = sample_archive / rel
    s3 = S3({f"requester-pays-bucket/{rel}": path.read_bytes()})
    try:
        for name, value in {"AWS_S3_ENDPOINT": f"127.0.0.1:{s3.server.server_address[1]}", "AWS_HTTPS": "NO",
                            "AWS_VIRTUAL_HOSTING": "FALSE", "AWS_ACCESS_KEY_ID": "AKIDLOOPBACK",
                            "AWS_SECRET_ACCESS_KEY": "loopback-secret", "AWS_REGION": "eu-west-2",
                            "AWS_REQUEST_PAYER": "requester"}.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
        monkeypatch.delenv("AWS_PROFILE", raising=False)
        href = Href(f"s3://requester-pays-bucket/{rel}", Catalogue(planetary.STAC_URL))
        grid = _native_grid(path)
        clear_http_cache()
        values, _ = read_on_grid(href, grid)
        with rasterio.open(path) as ds:
            assert np.array_equal(values, ds.read(1))
        assert s3.requests and all(payer == "requester" for *_, payer in s3.requests)
        assert all(auth.startswith("AWS4-HMAC-SHA256 Credential=AKIDLOOPBACK/") for _, _, auth, _ in s3.requests)
        monkeypatch.delenv("AWS_REQUEST_PAYER")
        clear_http_cache()
        with pytest.raises(ReadError) as caught:
            read_on_grid(href, grid)
        assert str(caught.value).startswith(f"{href}: ")
    finally:
        s3.close()
        clear_http_cache()


# --- searching: the collection ------------------------------------------------------------------

def test_the_default_collection_on_a_planetary_computer_like_api_names_sentinel_2_l2a(realdata):
    """A STAC API on loopback offering Planetary Computer's real sentinel-2-l2a collection
    document (and others): asked for Earth Search's Collection 1, the search names the one it has."""
    from datetime import date

    from cloud_probability.core.search import DEFAULT_COLLECTION, SearchError, SearchRequest, search_scenes

    s2 = json.loads((realdata / "planetary_computer_stac" / "pc_collection_sentinel-2-l2a.json").read_text())
    others = [{**s2, "id": name, "links": []} for name in ("landsat-c2-l2", "naip", "cop-dem-glo-30", "io-lulc")]

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            base = f"http://127.0.0.1:{self.server.server_address[1]}/api/stac/v1"
            if self.path.rstrip("/").endswith("/collections"):
                body = {"collections": [s2] + others, "links": []}
            else:
                body = {"type": "Catalog", "id": "loopback-pc", "stac_version": "1.0.0", "description": "loopback",
                        "conformsTo": [f"https://api.stacspec.org/v1.0.0/{c}"
                                       for c in ("core", "item-search", "collections")],
                        "links": [{"rel": "self", "href": base}, {"rel": "root", "href": base},
                                  {"rel": "data", "href": base + "/collections"},
                                  {"rel": "search", "href": base + "/search", "method": "POST"}]}
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/api/stac/v1"
        with pytest.raises(SearchError) as caught:
            search_scenes(SearchRequest(url, DEFAULT_COLLECTION, (-149, 60.5, -148, 61), date(2019, 6, 1),
                                        date(2019, 6, 30), retries=0))
        assert str(caught.value).startswith(
            f"The STAC API at {url} has no collection 'sentinel-2-c1-l2a'. Did you mean 'sentinel-2-l2a'? It offers: ")
    finally:
        server.shutdown()
        server.server_close()
