"""core.search against real STAC APIs on loopback: rustac over the sample archive, and a
deliberately unreliable server that claims 'query' conformance but ignores the query."""
from __future__ import annotations

import json
import threading
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cloud_probability.core.progress import Cancelled, NullProgress
from cloud_probability.core.search import SearchError, SearchRequest, search_scenes
from cloud_probability.core.stac import parse_datetime
from cloud_probability.sampledata.sample_archive import aoi_lonlat


class Recorder(NullProgress):
    def __init__(self, cancel_after_pages: int | None = None):
        self.infos, self.warnings, self.percent = [], [], []
        self.cancel_after_pages = cancel_after_pages

    def info(self, message):
        self.infos.append(message)

    def warning(self, message):
        self.warnings.append(message)

    def set_progress(self, percent):
        self.percent.append(percent)

    def is_canceled(self):
        pages = sum(1 for m in self.infos if m.startswith("Page "))
        return self.cancel_after_pages is not None and pages >= self.cancel_after_pages


def _archive_items(archive) -> list[dict]:
    return json.loads((archive / "items" / "items.json").read_text())["features"]


def _request(servers, archive, **kw) -> SearchRequest:
    base = dict(
        url=servers.stac.url, collection="sentinel-2-c1-l2a", bbox=aoi_lonlat(archive),
        start=date(2024, 1, 1), end=date(2024, 12, 31), page_size=50,
    )
    base.update(kw)
    return SearchRequest(**base)


def test_whole_year_returns_every_item_once_over_several_pages(sample_servers, sample_archive):
    progress = Recorder()
    result = search_scenes(_request(sample_servers, sample_archive), progress)
    expected = {f["id"] for f in _archive_items(sample_archive)}
    ids = [s.item_id for s in result.scenes]
    assert len(ids) == len(set(ids)) == len(expected) and set(ids) == expected
    assert sum(1 for m in progress.infos if m.startswith("Page ")) >= len(expected) // 50
    assert [s.datetime for s in result.scenes] == sorted(s.datetime for s in result.scenes)
    assert progress.percent[-1] == 100.0
    assert result.server_side == []  # rustac declares neither query nor filter: all on the client


def test_scene_cloud_limit_is_applied_on_the_client(sample_servers, sample_archive):
    result = search_scenes(_request(sample_servers, sample_archive, max_scene_cloud=25.0))
    expected = {f["id"] for f in _archive_items(sample_archive) if f["properties"]["eo:cloud_cover"] <= 25.0}
    assert {s.item_id for s in result.scenes} == expected and 0 < len(expected) < len(_archive_items(sample_archive))
    assert result.dropped["scene cloud above the limit"] == len(_archive_items(sample_archive)) - len(expected)


def test_dates_are_utc_days_both_included(sample_servers, sample_archive):
    result = search_scenes(_request(sample_servers, sample_archive, start=date(2024, 3, 2), end=date(2024, 3, 12)))
    days = {s.datetime[:10] for s in result.scenes}
    expected = {f["properties"]["datetime"][:10] for f in _archive_items(sample_archive)} & {
        f"2024-03-{d:02d}" for d in range(2, 13)
    }
    assert days == expected and "2024-03-12" in days  # the end day itself is searched


def test_max_items_and_small_area(sample_servers, sample_archive):
    west, south, east, north = aoi_lonlat(sample_archive)
    result = search_scenes(_request(sample_servers, sample_archive, max_items=7))
    assert len(result.scenes) == 7
    # a small box west of 0° E only touches zone-30 tiles
    box = (west, south, west + 0.005, south + 0.005)
    result = search_scenes(_request(sample_servers, sample_archive, bbox=box))
    assert {s.epsg for s in result.scenes} == {32630}


def test_split_datatake_and_reprocessed_duplicate_share_the_datatake(sample_servers, sample_archive):
    scenes = search_scenes(_request(sample_servers, sample_archive)).scenes
    by_key: dict[tuple[str, str], list] = {}
    for s in scenes:
        by_key.setdefault((s.datatake_id, s.mgrs_tile), []).append(s)
    shared = [v for v in by_key.values() if len(v) > 1]
    baselines = sorted(tuple(sorted(s.processing_baseline for s in v)) for v in shared)
    assert baselines == [("05.10", "05.10"), ("05.10", "05.11")]  # one split datatake, one reprocessed


def test_cancel_between_pages(sample_servers, sample_archive):
    progress = Recorder(cancel_after_pages=1)
    with pytest.raises(Cancelled):
        search_scenes(_request(sample_servers, sample_archive), progress)
    assert sum(1 for m in progress.infos if m.startswith("Page ")) == 1


def test_clear_errors(sample_servers, sample_archive):
    from servers import free_port

    with pytest.raises(SearchError, match="Cannot reach the STAC API"):
        search_scenes(_request(sample_servers, sample_archive, url=f"http://127.0.0.1:{free_port()}", retries=0))
    with pytest.raises(SearchError, match="not .*STAC API"):
        search_scenes(_request(sample_servers, sample_archive, url=f"{sample_servers.cogs.url}/archive.json"))
    with pytest.raises(SearchError, match="no collection 'sentinel-2-l1c'.*sentinel-2-c1-l2a"):
        search_scenes(_request(sample_servers, sample_archive, collection="sentinel-2-l1c"))
    with pytest.raises(SearchError, match="before the start date"):
        search_scenes(_request(sample_servers, sample_archive, start=date(2024, 5, 1), end=date(2024, 4, 1)))
    with pytest.raises(SearchError, match="No scenes of 'sentinel-2-c1-l2a'"):
        search_scenes(_request(sample_servers, sample_archive, start=date(2023, 1, 1), end=date(2023, 6, 30)))


# --- a real HTTP server that behaves like the servers users meet -------------------------


@pytest.fixture()
def unreliable_api(realdata):
    """Declares 'query' conformance, ignores the query, and fails with 503 twice first."""
    pages = [
        json.loads((realdata / "earthsearch_stac" / f"es_v1_search_cc-lte-40_2024-05-17_page{n}.json").read_text())
        for n in (1, 2)
    ]
    # the two real pages are the start of a 90,671,830-item result; this server sends only them,
    # so it reports the count it sends (a search ending short of its count is an error)
    served = sum(len(page["features"]) for page in pages)
    for page in pages:
        page["numberMatched"] = page["context"]["matched"] = served
    state = {"search_calls": 0, "bodies": []}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802
            base = f"http://127.0.0.1:{self.server.server_address[1]}"
            if self.path.rstrip("/") == "":
                self._send(200, {
                    "type": "Catalog", "id": "flaky", "stac_version": "1.0.0", "description": "test",
                    "conformsTo": [
                        "https://api.stacspec.org/v1.0.0/core",
                        "https://api.stacspec.org/v1.0.0/item-search",
                        "https://api.stacspec.org/v1.0.0/item-search#query",
                        "https://api.stacspec.org/v1.0.0/collections",
                    ],
                    "links": [
                        {"rel": "self", "href": base + "/"}, {"rel": "root", "href": base + "/"},
                        {"rel": "search", "href": base + "/search", "method": "POST", "type": "application/geo+json"},
                        {"rel": "data", "href": base + "/collections"},
                    ],
                })
            elif self.path.startswith("/collections"):
                self._send(200, {"collections": [{"type": "Collection", "id": "sentinel-2-l2a", "stac_version": "1.0.0",
                    "description": "x", "license": "x", "links": [],
                    "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]}, "temporal": {"interval": [[None, None]]}}}],
                    "links": []})
            else:
                self._send(404, {"code": "NotFound"})

        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state["search_calls"] += 1
            if state["search_calls"] <= 2:
                self._send(503, {"code": "ServiceUnavailable"})
                return
            state["bodies"].append(body)
            page = dict(pages[1] if "next" in body else pages[0])
            base = f"http://127.0.0.1:{self.server.server_address[1]}"
            page["links"] = (
                [{"rel": "next", "href": base + "/search", "method": "POST", "body": {**body, "next": "p2"}, "merge": False}]
                if "next" not in body else []
            )
            self._send(200, page)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()


def test_server_that_ignores_the_query_cannot_make_the_list_wrong(unreliable_api):
    url, state = unreliable_api
    progress = Recorder()
    request = SearchRequest(url, "sentinel-2-l2a", (-180, -90, 180, 90), date(2024, 5, 17), date(2024, 5, 17), 40.0)
    result = search_scenes(request, progress)
    assert state["search_calls"] == 4  # two 503s retried with back-off, then two pages
    assert state["bodies"][0]["query"] == {"eo:cloud_cover": {"lte": 40.0}}  # asked, since it claims to conform
    assert sorted(round(s.scene_cloud, 3) for s in result.scenes) == [0.06, 25.902, 31.706, 31.803]
    assert result.dropped["scene cloud above the limit"] == 1  # the 51.85 % scene it let through
    assert result.dropped["other collection"] >= 8
    assert any("ignored the cloud filter" in w for w in progress.warnings)
    assert all(parse_datetime(s.datetime).date() == date(2024, 5, 17) for s in result.scenes)
