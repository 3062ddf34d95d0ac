"""Faults, hostile input and bad input (issue 14): each case against a real server on loopback.

Every test asserts the message the user gets and that nothing else went wrong: the call returns
within a bound (no hang), nothing is written when the run fails, and no worker is left behind.
The fault server is the standard library's ``http.server`` in a thread, bound to 127.0.0.1,
started once for this module and stopped at its end.

Sections: ``# --- STAC search`` (core.search and cloudprob:searchscenes), ``# --- Inputs: the
area`` (the extent and AOI checks of processing_provider/common.py). Further sections may follow.
"""
from __future__ import annotations

import copy
import json
import socket
import threading
import time
import tracemalloc
from collections import Counter
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from cloud_probability.core.progress import Cancelled, NullProgress
from cloud_probability.core.search import SearchError, SearchRequest, search_scenes

BOUND_S = 10.0  # every call here must return within this, whatever the server does


class Recorder(NullProgress):
    """Keeps the log; cancels at a given moment or when a log line contains a given text."""

    def __init__(self, cancel_after_s: float | None = None, cancel_on: str | None = None):
        self.infos: list[str] = []
        self.warnings: list[str] = []
        self.start = time.monotonic()
        self.cancel_after_s = cancel_after_s
        self.cancel_on = cancel_on
        self.cancelled_at: float | None = None

    def info(self, message):
        self.infos.append(message)

    def warning(self, message):
        self.warnings.append(message)

    def is_canceled(self):
        if self.cancelled_at is None:
            due = self.cancel_after_s is not None and time.monotonic() - self.start >= self.cancel_after_s
            seen = self.cancel_on is not None and any(self.cancel_on in m for m in self.infos + self.warnings)
            if due or seen:
                self.cancelled_at = time.monotonic()
        return self.cancelled_at is not None


def _workers_left(timeout: float = 2.0) -> list[threading.Thread]:
    """The search's request threads still alive after ``timeout`` s (an aborted read must end)."""
    end = time.monotonic() + timeout
    while True:
        alive = [t for t in threading.enumerate() if t.name == "cloudprob-stac-request" and t.is_alive()]
        if not alive or time.monotonic() > end:
            return alive
        time.sleep(0.05)


# --- the fault server ----------------------------------------------------------------------

BBOX = (19.5, 29.65, 19.6, 29.75)  # inside the real item's footprint below
DAY = date(2024, 5, 17)


def _items(realdata, n: int) -> list[dict]:
    page = json.loads((realdata / "earthsearch_stac" / "es_v1_search_cc-lte-40_2024-05-17_page1.json").read_text())
    model = next(f for f in page["features"] if f["collection"] == "sentinel-2-l2a")
    model["assets"] = {k: v for k, v in model["assets"].items() if k in ("scl", "red")}
    items = []
    for i in range(n):
        item = copy.deepcopy(model)
        item["id"] = f"FAULT_{i:05d}"
        item["properties"]["datetime"] = f"2024-05-17T09:{i // 60 % 60:02d}:{i % 60:02d}Z"
        items.append(item)
    return items


class FaultServer:
    """One server, many STAC APIs: ``/<case>/`` is the root of an API that misbehaves as named."""

    def __init__(self, items: list[dict]):
        self.items = items
        self.hits: Counter = Counter()  # case -> requests; "case/search" -> search pages asked for
        self.stop = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def handle(self):
                try:
                    super().handle()
                except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, socket.timeout):
                    pass  # the client gave up on us: what several cases are about

            def do_GET(self):  # noqa: N802
                outer.dispatch(self, None)

            def do_POST(self):  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                outer.dispatch(self, body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="fault-server", daemon=True)

    def url(self, case: str) -> str:
        return f"http://127.0.0.1:{self.port}/{case}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    # ----------------------------------------------------------------- answers
    @staticmethod
    def send(handler, status: int, body, content_type: str = "application/json", headers: dict | None = None):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)

    def root(self, case: str) -> dict:
        base = self.url(case)
        return {
            "type": "Catalog", "id": case, "stac_version": "1.0.0", "description": "fault injector",
            "conformsTo": [
                "https://api.stacspec.org/v1.0.0/core",
                "https://api.stacspec.org/v1.0.0/item-search",
                "https://api.stacspec.org/v1.0.0/collections",
            ],
            "links": [
                {"rel": "self", "href": base + "/"}, {"rel": "root", "href": base + "/"},
                {"rel": "search", "href": base + "/search", "method": "POST", "type": "application/geo+json"},
                {"rel": "data", "href": base + "/collections"},
            ],
        }

    @staticmethod
    def collections() -> dict:
        return {"collections": [{
            "type": "Collection", "id": "sentinel-2-l2a", "stac_version": "1.0.0", "description": "x", "license": "x",
            "links": [], "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]}, "temporal": {"interval": [[None, None]]}},
        }], "links": []}

    def page(self, case: str, items: list[dict], next_page: int | str | None, matched: int | None = None) -> dict:
        page: dict = {"type": "FeatureCollection", "features": items, "links": []}
        if matched is not None:
            page["numberMatched"] = matched
            page["context"] = {"matched": matched, "returned": len(items)}
        if isinstance(next_page, int):
            page["links"].append({"rel": "next", "href": f"{self.url(case)}/search?page={next_page}", "method": "GET"})
        elif isinstance(next_page, str):
            page["links"].append({"rel": "next", "href": next_page, "method": "GET"})
        return page

    def dispatch(self, handler, body):
        parts = urlsplit(handler.path)
        segments = [s for s in parts.path.split("/") if s]
        case = segments[0] if segments else ""
        rest = "/".join(segments[1:])
        self.hits[case] += 1
        if case == "hang":  # accepts, reads the request, never answers
            self.stop.wait(60)
            return
        if case == "trickle":  # promises 100 kB, sends a byte every 0.3 s
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", "100000")
            handler.end_headers()
            handler.wfile.write(b"{")
            while not self.stop.wait(0.3):
                handler.wfile.write(b" ")
                handler.wfile.flush()
            return
        if case == "html":  # a web server, not a STAC API
            page = b"<!DOCTYPE html><html><head><title>Welcome</title></head><body>" + b"<p>nginx</p>" * 2000 + b"</body></html>"
            self.send(handler, 200, page, "text/html")
            return
        if case == "html404":
            self.send(handler, 404, b"<html><body><h1>404 Not Found</h1>" + b"x" * 5000 + b"</body></html>", "text/html")
            return
        if rest == "":
            self.send(handler, 200, self.root(case))
            return
        if rest == "collections":
            self.send(handler, 200, self.collections())
            return
        if rest != "search":
            self.send(handler, 404, {"code": "NotFound"})
            return
        number = int(parse_qs(parts.query).get("page", ["1"])[0])
        self.hits[case + "/search"] += 1
        self.search(handler, case, number)

    def search(self, handler, case: str, number: int):
        items = self.items
        if case == "ok":  # 3 pages of 10, a count: the baseline every other case departs from
            self.send(handler, 200, self.page(case, items[(number - 1) * 10:number * 10], number + 1 if number < 3 else None, 30))
        elif case == "retryafter":
            self.send(handler, 503, {"code": "ServiceUnavailable"}, headers={"Retry-After": "3600"})
        elif case == "error500html":
            self.send(handler, 500, b"<html><body><h1>Internal Server Error</h1><pre>Traceback ...</pre></body></html>", "text/html")
        elif case == "loop":  # page 2 links back to page 1
            self.send(handler, 200, self.page(case, items[(number - 1) * 10:number * 10], 2 if number == 1 else 1))
        elif case == "selfloop":  # page 2 links to itself
            self.send(handler, 200, self.page(case, items[(number - 1) * 10:number * 10], 2))
        elif case == "endless":  # new items on every page, forever
            chunk = [dict(items[0], id=f"ENDLESS_{number:06d}_{i:02d}") for i in range(10)]
            self.send(handler, 200, self.page(case, chunk, number + 1))
        elif case == "huge":  # says it matched a billion
            self.send(handler, 200, self.page(case, items[:10], 2, 1_000_000_000))
        elif case == "cross":  # page 1's next link is on another server
            self.send(handler, 200, self.page(case, items[:10], f"http://127.0.0.1:{self.other_port}/ok/search?page=2", 30))
        elif case == "redirect":  # the search is redirected to another server
            handler.send_response(307)
            handler.send_header("Location", f"http://127.0.0.1:{self.other_port}/ok/search")
            handler.send_header("Content-Length", "0")
            handler.end_headers()
        elif case == "sameredirect":  # redirected within the API: followed
            handler.send_response(307)
            handler.send_header("Location", f"{self.url('ok')}/search")
            handler.send_header("Content-Length", "0")
            handler.end_headers()
        elif case == "dropped":  # promises 1000 bytes, sends 10, hangs up
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", "1000")
            handler.end_headers()
            handler.wfile.write(b'{"type": "')
            handler.wfile.flush()
            handler.close_connection = True
        elif case in ("emptymid", "emptycontinue"):  # 586 matched, 100 a page, page 3 empty
            if number == 3:
                self.send(handler, 200, self.page(case, [], 4 if case == "emptycontinue" else None, 586))
                return
            start = (number - 1 if number < 3 else number - 2) * 100
            chunk = items[start:min(start + 100, 586)]
            self.send(handler, 200, self.page(case, chunk, number + 1 if start + 100 < 586 else None, 586))
        elif case == "bigheader":  # claims a terabyte
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(2 ** 40))
            handler.end_headers()
            handler.wfile.write(b'{"type": "FeatureCollection", "features": [')
        elif case == "endlessbody":  # chunked, never ends
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Transfer-Encoding", "chunked")
            handler.end_headers()
            filler = b" " * 65536
            handler.wfile.write(b"%x\r\n{\r\n" % 1)
            while not self.stop.is_set():
                handler.wfile.write(b"%x\r\n%s\r\n" % (len(filler), filler))
        else:
            self.send(handler, 404, {"code": "NotFound"})


@pytest.fixture(scope="module")
def faults(realdata):
    """The fault server and a second one (another address) that counts what reaches it."""
    items = _items(realdata, 600)
    with FaultServer(items) as server, FaultServer(items) as other:
        server.other_port = other.port
        other.other_port = server.port
        server.other = other
        yield server


def _request(url: str, **kw) -> SearchRequest:
    base = dict(url=url, collection="sentinel-2-l2a", bbox=BBOX, start=DAY, end=DAY)
    base.update(kw)
    return SearchRequest(**base)


def _timed(fn, *args, **kwargs):
    """(exception or result, seconds taken)."""
    start = time.monotonic()
    try:
        out = fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the tests look at it
        out = exc
    return out, time.monotonic() - start


# --- STAC search ---------------------------------------------------------------------------


def test_fault_server_baseline_search_works(faults):
    result = search_scenes(_request(faults.url("ok")))
    assert [s.item_id for s in result.scenes] == [f"FAULT_{i:05d}" for i in range(30)]
    assert result.matched == 30 and result.returned == 30


def test_server_that_never_answers_hits_the_deadline(faults):
    before = faults.hits["hang"]
    out, took = _timed(search_scenes, _request(faults.url("hang"), timeout=2.0))
    assert isinstance(out, SearchError), out
    assert str(out).startswith(f"The STAC API at 127.0.0.1:{faults.port} did not answer within 2 s.")
    assert 1.5 < took < BOUND_S
    assert faults.hits["hang"] == before + 1  # a timeout is not retried: it would only multiply the wait
    assert not _workers_left()


def test_cancel_stops_a_request_that_never_answers(faults):
    progress = Recorder(cancel_after_s=0.5)
    out, took = _timed(search_scenes, _request(faults.url("hang")), progress)  # default deadline: 60 s
    assert isinstance(out, Cancelled), out
    assert time.monotonic() - progress.cancelled_at < 1.0  # Cancel took effect within a second
    assert took < BOUND_S
    assert not _workers_left()  # the blocked read was ended, not abandoned


def test_deadline_is_for_the_whole_answer_not_per_byte(faults):
    out, took = _timed(search_scenes, _request(faults.url("trickle"), timeout=2.0))
    assert isinstance(out, SearchError) and "did not answer within 2 s" in str(out), out
    assert took < BOUND_S
    assert not _workers_left()


def test_retry_after_is_capped_at_60_s_and_said(faults):
    progress = Recorder(cancel_on="waiting 60 s instead")
    out, took = _timed(search_scenes, _request(faults.url("retryafter")), progress)
    assert isinstance(out, Cancelled), out
    assert progress.warnings == [
        "The STAC API asked to wait 3600 s before trying again (Retry-After); "
        "waiting 60 s instead, the longest this plugin waits."
    ]
    assert time.monotonic() - progress.cancelled_at < 1.0 and took < BOUND_S  # the wait itself is cancellable


def test_retry_after_wait_then_a_clear_error(faults):
    progress = Recorder()
    out, took = _timed(search_scenes, _request(faults.url("retryafter"), retries=2, max_retry_wait=0.2), progress)
    assert isinstance(out, SearchError), out
    assert str(out) == (
        f"The STAC API at 127.0.0.1:{faults.port} answered 503 Service Unavailable to POST /retryafter/search "
        "after 2 retries: the server is having trouble; try again later. The server said: ServiceUnavailable"
    )
    assert sum("waiting 0.2 s instead" in w for w in progress.warnings) == 2
    assert took < BOUND_S


def test_next_link_back_to_page_1_is_a_loop(faults):
    before = faults.hits["loop/search"]
    out, took = _timed(search_scenes, _request(faults.url("loop")))
    assert isinstance(out, SearchError), out
    assert str(out).startswith(
        f"The STAC API at 127.0.0.1:{faults.port} sent page 3 with the same items as page 1: its paging goes "
        "round in a loop, so the search stopped after 3 pages and 30 items rather than run forever."
    )
    assert faults.hits["loop/search"] - before == 3 and took < BOUND_S


def test_next_link_to_itself_is_a_loop(faults):
    out, _ = _timed(search_scenes, _request(faults.url("selfloop")))
    assert isinstance(out, SearchError), out
    assert "sent a 'next' link on page 2 back to page 2: its paging goes round in a loop" in str(out)


def test_pages_that_never_end_are_bounded(faults):
    before = faults.hits["endless/search"]
    tracemalloc.start()
    try:
        out, took = _timed(search_scenes, _request(faults.url("endless"), max_pages=40))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert isinstance(out, SearchError), out
    assert str(out) == (
        f"The STAC API at 127.0.0.1:{faults.port} kept sending pages: 40 pages and 400 items, more than the 40 "
        "pages this plugin reads for one search. Narrow the area or the period, or set a maximum number of scenes."
    )
    assert faults.hits["endless/search"] - before == 40 and took < BOUND_S
    assert peak < 64 * 2**20

    out, _ = _timed(search_scenes, _request(faults.url("endless"), max_returned=95))
    assert isinstance(out, SearchError) and "has sent 100 items in 10 pages, more than the 95 this plugin accepts" in str(out)


def test_a_count_beyond_the_bound_fails_at_the_first_page(faults):
    before = faults.hits["huge/search"]
    out, _ = _timed(search_scenes, _request(faults.url("huge")))
    assert isinstance(out, SearchError), out
    assert str(out) == (
        f"The STAC API at 127.0.0.1:{faults.port} matched 1,000,000,000 items for this search, more than the 50,000 "
        "this plugin accepts for one search. Narrow the area or the period, or set a maximum number of scenes."
    )
    assert faults.hits["huge/search"] - before == 1  # no second page


def test_next_link_to_another_host_is_refused(faults):
    other_before = faults.other.hits["ok"]
    out, _ = _timed(search_scenes, _request(faults.url("cross")))
    assert isinstance(out, SearchError), out
    assert str(out) == (
        f"The STAC API at 127.0.0.1:{faults.port} sent a 'next' link to another address (127.0.0.1:{faults.other.port}) "
        "on page 1: the plugin follows links only within the API's own address, so the search stopped after 1 "
        "pages and 10 items, and nothing was kept."
    )
    assert faults.other.hits["ok"] == other_before  # never asked


def test_redirect_to_another_host_is_refused_before_it_is_followed(faults):
    other_before = faults.other.hits["ok"]
    out, _ = _timed(search_scenes, _request(faults.url("redirect")))
    assert isinstance(out, SearchError), out
    assert f"redirected a request to another address (127.0.0.1:{faults.other.port})" in str(out)
    assert faults.other.hits["ok"] == other_before


def test_redirect_within_the_api_is_followed(faults):
    result = search_scenes(_request(faults.url("sameredirect")))
    assert len(result.scenes) == result.matched == 30


def test_connection_dropped_mid_answer_is_retried_then_named(faults):
    before = faults.hits["dropped/search"]
    progress = Recorder()
    out, took = _timed(search_scenes, _request(faults.url("dropped"), retries=2), progress)
    assert isinstance(out, SearchError), out
    assert str(out) == (
        f"The STAC API at 127.0.0.1:{faults.port} closed the connection before its answer was complete, 3 times "
        "in a row (IncompleteRead). Try again later."
    )
    assert faults.hits["dropped/search"] - before == 3 and took < BOUND_S
    assert [m for m in progress.infos if m.startswith("The STAC API did not answer usefully")] == [
        "The STAC API did not answer usefully (the connection was closed mid-answer (IncompleteRead)); trying again "
        "in 0.5 s (retry 1 of 2).",
        "The STAC API did not answer usefully (the connection was closed mid-answer (IncompleteRead)); trying again "
        "in 1 s (retry 2 of 2).",
    ]


def test_an_empty_page_midway_is_an_incomplete_search(faults):
    out, _ = _timed(search_scenes, _request(faults.url("emptymid")))
    assert isinstance(out, SearchError), out
    assert str(out) == (
        f"The search at 127.0.0.1:{faults.port} is incomplete: the server matched 586 items but sent only 200 "
        "(its page 3 was empty). Nothing was kept, since a shorter list would give wrong figures; try again "
        "later, or narrow the period."
    )


def test_an_empty_page_with_a_next_link_does_not_end_the_search(faults):
    result = search_scenes(_request(faults.url("emptycontinue")))
    assert len(result.scenes) == result.matched == result.returned == 586


def test_area_outside_every_scene_is_named(faults):
    """The fault server ignores the area, as some servers do: every scene is dropped on the client."""
    out, _ = _timed(search_scenes, _request(faults.url("ok"), bbox=(-3.5, 55.9, -3.4, 56.0)))
    assert isinstance(out, SearchError), out
    assert str(out) == (
        f"The area (-3.5, 55.9, -3.4, 56.0) (longitude/latitude) lies outside the footprint of every one of the 30 "
        f"scenes the STAC API at 127.0.0.1:{faults.port} returned: no scene covers it. Check the area's coordinates "
        "and CRS."
    )


def test_refused_connection_fails_fast_in_plain_words(faults):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out, took = _timed(search_scenes, _request(f"http://127.0.0.1:{port}/v1"))  # default retries
    assert isinstance(out, SearchError), out
    assert str(out) == (
        f"Cannot reach the STAC API at 127.0.0.1:{port}: the connection was refused (nothing answers at that "
        "address and port). Check the STAC API URL, and that the server is running."
    )
    assert took < 2.0  # was 17 s of retries


def test_unknown_host_name_in_plain_words():
    out, took = _timed(search_scenes, _request("https://no-such-host.invalid/v1"))
    assert isinstance(out, SearchError), out
    assert str(out).startswith("Cannot reach the STAC API at no-such-host.invalid: no computer of that name could be found.")
    assert took < BOUND_S


@pytest.mark.parametrize("case, expected", [
    ("html", "127.0.0.1:{port} is not a STAC API: it answered /html with a web page (HTML), not STAC JSON. "
             "Check the STAC API URL: it should be the API's root, such as https://earth-search.aws.element84.com/v1."),
    ("html404", "The STAC API at 127.0.0.1:{port} answered 404 Not Found to GET /html404: there is nothing at that "
                "address: check the STAC API URL (it should be the API's root)."),
    ("error500html", "The STAC API at 127.0.0.1:{port} answered 500 Internal Server Error to POST /error500html/search: "
                     "the server is having trouble; try again later."),
])
def test_a_web_page_never_reaches_the_message(faults, case, expected):
    out, took = _timed(search_scenes, _request(faults.url(case), retries=0))
    assert isinstance(out, SearchError), out
    assert str(out) == expected.format(port=faults.port)
    assert "<" not in str(out) and took < BOUND_S


def test_an_answer_larger_than_the_bound_is_refused_before_it_is_read(faults):
    tracemalloc.start()
    try:
        out, took = _timed(search_scenes, _request(faults.url("bigheader")))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert isinstance(out, SearchError), out
    assert str(out).startswith(
        f"The STAC API at 127.0.0.1:{faults.port} sent an answer of more than 64 MiB for one page (1048576 MiB or more)"
    )
    assert peak < 32 * 2**20 and took < BOUND_S


def test_an_endless_answer_is_cut_at_the_bound(faults):
    tracemalloc.start()
    try:
        out, took = _timed(search_scenes, _request(faults.url("endlessbody"), max_response_bytes=4 * 2**20))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert isinstance(out, SearchError), out
    assert "sent an answer of more than 4 MiB for one page" in str(out)
    assert peak < 32 * 2**20 and took < BOUND_S
    assert not _workers_left()


@pytest.mark.parametrize("url, expected", [
    ("earth-search.aws.element84.com/v1",
     "The STAC API URL 'earth-search.aws.element84.com/v1' has no 'https://' at its start: write it as "
     "'https://earth-search.aws.element84.com/v1'."),
    ("/home/me/catalog.json",
     "The STAC API URL '/home/me/catalog.json' is not a web address: it must start with https:// or http:// "
     "(for example https://earth-search.aws.element84.com/v1)."),
    ("ftp://example.com/stac",
     "The STAC API URL 'ftp://example.com/stac' is not a web address: it must start with https:// or http:// "
     "(for example https://earth-search.aws.element84.com/v1)."),
])
def test_url_without_scheme_is_caught_before_any_work(url, expected):
    with pytest.raises(SearchError) as caught:
        search_scenes(_request(url))
    assert str(caught.value) == expected


# --- STAC search through cloudprob:searchscenes ---------------------------------------------


def _run_search(faults, tmp_path, feedback=None, **params):
    import processing

    out = tmp_path / "scenes.gpkg"
    west, south, east, north = BBOX
    base = {
        "STAC_URL": faults.url("ok"), "COLLECTION": "sentinel-2-l2a",
        "AOI": f"{west},{east},{south},{north} [EPSG:4326]",
        "START_DATE": DAY.isoformat(), "END_DATE": DAY.isoformat(), "OUTPUT": str(out),
    }
    base.update(params)
    return processing.run("cloudprob:searchscenes", base, feedback=feedback), out


def test_searchscenes_url_without_scheme(provider, faults, tmp_path):
    from qgis.core import QgsProcessingException

    with pytest.raises(QgsProcessingException, match="has no 'https://' at its start: write it as 'https://127.0.0.1"):
        _run_search(faults, tmp_path, STAC_URL=f"127.0.0.1:{faults.port}/ok")
    assert not (tmp_path / "scenes.gpkg").exists()


def test_searchscenes_cancel_while_the_server_hangs(provider, faults, tmp_path):
    from qgis.core import QgsProcessingFeedback

    feedback = QgsProcessingFeedback()
    timer = threading.Timer(0.5, feedback.cancel)
    timer.start()
    start = time.monotonic()
    result, out = _run_search(faults, tmp_path, feedback, STAC_URL=faults.url("hang"))
    assert time.monotonic() - start < 0.5 + 1.5
    assert feedback.isCanceled() and result.get("OUTPUT") is None and not out.exists()
    assert "Search cancelled; nothing was written." in feedback.textLog()
    assert not _workers_left()


def test_searchscenes_incomplete_search_writes_nothing(provider, faults, tmp_path):
    from qgis.core import QgsProcessingException

    with pytest.raises(QgsProcessingException, match="the server matched 586 items but sent only 200"):
        _run_search(faults, tmp_path, STAC_URL=faults.url("emptymid"))
    assert not (tmp_path / "scenes.gpkg").exists()


def test_searchscenes_area_outside_every_scene(provider, faults, tmp_path):
    """A server that ignores the area (the fault server does) returns scenes elsewhere: all are
    dropped on the client, and the message says the area is outside every footprint."""
    from qgis.core import QgsProcessingException

    with pytest.raises(QgsProcessingException, match=r"lies outside the footprint of every one of the 30 scenes"):
        _run_search(faults, tmp_path, AOI="-3.5,-3.4,55.9,56.0 [EPSG:4326]")
    assert not (tmp_path / "scenes.gpkg").exists()


# --- Inputs: the area ----------------------------------------------------------------------


def test_extent_in_bbox_order_is_refused_with_the_fix(provider, faults, tmp_path):
    from qgis.core import QgsProcessingException

    before = faults.hits["ok"]
    with pytest.raises(QgsProcessingException) as caught:
        _run_search(faults, tmp_path, AOI="500000,150000,560000,210000 [EPSG:27700]")
    assert str(caught.value) == (
        "In the extent '500000,150000,560000,210000 [EPSG:27700]', xmin 500000 is greater than xmax 150000: QGIS "
        "would silently swap them and use 350 × 350 km. These numbers look like bbox order (xmin,ymin,xmax,ymax); "
        "QGIS reads an extent as xmin,xmax,ymin,ymax. Did you mean '500000,560000,150000,210000 [EPSG:27700]' "
        "(60 × 60 km)?"
    )
    assert not (tmp_path / "scenes.gpkg").exists() and faults.hits["ok"] == before  # refused before any request


def test_lonlat_extent_in_bbox_order_beyond_90_degrees(provider, faults, tmp_path):
    from qgis.core import QgsProcessingException

    with pytest.raises(QgsProcessingException, match=r"latitudes -119…36, beyond ±90°.*Did you mean '-120,-119,35,36 \[EPSG:4326\]'"):
        _run_search(faults, tmp_path, AOI="-120,35,-119,36 [EPSG:4326]")


def test_ambiguous_extent_is_used_as_typed_with_a_warning(provider, faults, tmp_path):
    """London's box typed in bbox order is also a proper (huge) QGIS extent: a legitimate extent
    can look like that, so it is not refused; the log says how it was read and what to type."""
    from qgis.core import QgsProcessingFeedback

    class Keep(QgsProcessingFeedback):
        def __init__(self):
            super().__init__()
            self.warnings = []

        def pushWarning(self, warning):  # noqa: N802
            self.warnings.append(warning)
            super().pushWarning(warning)

    feedback = Keep()
    west, south, east, north = BBOX
    text = f"{west},{south},{east},{north} [EPSG:4326]"  # bbox order
    result, out = _run_search(faults, tmp_path, feedback, AOI=text)
    assert out.exists()
    assert feedback.warnings[0] == (
        f"The extent '{text}' is read as xmin,xmax,ymin,ymax: x 19.5…29.65, y 19.6…29.75 (10.15° × 10.15°). "
        f"If you meant bbox order (xmin,ymin,xmax,ymax), stop and give '19.5,19.6,29.65,29.75 [EPSG:4326]' "
        "instead (0.1° × 0.1°)."
    )


@pytest.mark.parametrize("aoi", ["19.5,19.5,29.65,29.75 [EPSG:4326]", "19.5,19.6,29.7,29.7 [EPSG:4326]"])
def test_zero_area_extent_is_refused(provider, faults, tmp_path, aoi):
    from qgis.core import QgsProcessingException

    with pytest.raises(QgsProcessingException, match=r"has no area \(zero width or height\): give an area, not a point or a line"):
        _run_search(faults, tmp_path, AOI=aoi)
    assert not (tmp_path / "scenes.gpkg").exists()


def test_legitimate_extents_pass_unremarked(provider, faults, tmp_path):
    from qgis.core import QgsProcessingFeedback

    feedback = QgsProcessingFeedback()
    _, out = _run_search(faults, tmp_path, feedback)
    assert out.exists() and "bbox order" not in feedback.textLog()


@pytest.fixture(scope="module")
def scenes_gpkg(faults, tmp_path_factory):
    """A scenes layer from cloudprob:searchscenes (the fault server's 30 scenes), for the stages
    after it; the checks below all fail before any scene is read."""
    from conftest import ensure_provider

    ensure_provider()
    folder = tmp_path_factory.mktemp("scenes")
    _, out = _run_search(faults, folder)
    assert out.exists()
    return out


def _frequency_outputs(tmp_path) -> dict:
    return {name: str(tmp_path / f"{name.lower()}.tif")
            for name in ("OUTPUT_PROBABILITY", "OUTPUT_VALID", "OUTPUT_CLOUDY", "OUTPUT_STDEV")}


@pytest.mark.parametrize("aoi, message", [
    ("500000,150000,560000,210000 [EPSG:27700]",
     r"xmin 500000 is greater than xmax 150000: QGIS would silently swap them and use 350 × 350 km\..*"
     r"Did you mean '500000,560000,150000,210000 \[EPSG:27700\]' \(60 × 60 km\)\?"),
    ("533000,533000,172000,184000 [EPSG:27700]", r"has no area \(zero width or height\)"),
])
def test_cloudfrequency_refuses_the_extent_before_any_work(provider, scenes_gpkg, tmp_path, aoi, message):
    import processing
    from qgis.core import QgsProcessingException

    outputs = _frequency_outputs(tmp_path)
    start = time.monotonic()
    with pytest.raises(QgsProcessingException, match=message):
        processing.run("cloudprob:cloudfrequency", {
            "SCENES": str(scenes_gpkg), "AOI": aoi, "TARGET_CRS": "EPSG:27700", "RESOLUTION": 20, **outputs})
    assert time.monotonic() - start < BOUND_S
    assert not any(p.exists() for p in map(__import__("pathlib").Path, outputs.values()))
    assert list(tmp_path.iterdir()) == []  # not even a temporary part file


def test_screenscenes_refuses_a_zero_area_extent(provider, scenes_gpkg, tmp_path):
    import processing
    from qgis.core import QgsProcessingException

    out = tmp_path / "screened.gpkg"
    with pytest.raises(QgsProcessingException, match=r"has no area \(zero width or height\): give an area"):
        processing.run("cloudprob:screenscenes", {
            "SCENES": str(scenes_gpkg), "AOI": "19.5,19.6,29.7,29.7 [EPSG:4326]", "OUTPUT": str(out)})
    assert not out.exists()


def test_an_area_geometry_without_area_is_refused(qgis_app):
    """area_geometry (screenscenes' polygons, cloudmask's extent) refuses a flat area. (A layer of
    flat polygons does not get that far: QGIS's own invalid-geometry check stops it first.)"""
    from qgis.core import QgsCoordinateReferenceSystem, QgsGeometry, QgsProcessingContext, QgsProcessingException

    from cloud_probability.processing_provider.common import area_geometry

    flat = QgsGeometry.fromWkt("POLYGON((19.5 29.7, 19.6 29.7, 19.55 29.7, 19.5 29.7))").makeValid()
    with pytest.raises(QgsProcessingException, match=r"has no area \(zero width or height, or polygons without area\)"):
        area_geometry(flat, QgsCoordinateReferenceSystem("EPSG:4326"), QgsProcessingContext())
