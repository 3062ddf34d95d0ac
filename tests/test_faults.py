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
        self.custom: dict[str, list[dict]] = {}  # case "custom-<name>": one page of these items
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
        if case.startswith("custom-"):  # one page of the items a test put there
            self.send(handler, 200, self.page(case, self.custom[case[len("custom-"):]], None))
        elif case == "ok":  # 3 pages of 10, a count: the baseline every other case departs from
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


@pytest.mark.fault("stac", "behaves")
def test_fault_server_baseline_search_works(faults):
    result = search_scenes(_request(faults.url("ok")))
    assert [s.item_id for s in result.scenes] == [f"FAULT_{i:05d}" for i in range(30)]
    assert result.matched == 30 and result.returned == 30


@pytest.mark.fault("stac", "error")
def test_server_that_never_answers_hits_the_deadline(faults):
    before = faults.hits["hang"]
    out, took = _timed(search_scenes, _request(faults.url("hang"), timeout=2.0))
    assert isinstance(out, SearchError), out
    assert str(out).startswith(f"The STAC API at 127.0.0.1:{faults.port} did not answer within 2 s.")
    assert took < BOUND_S  # returned: the deadline, not the server, ended the wait (the message says which)
    assert faults.hits["hang"] == before + 1  # a timeout is not retried: it would only multiply the wait
    assert not _workers_left()


@pytest.mark.fault("stac", "behaves")
def test_cancel_stops_a_request_that_never_answers(faults):
    progress = Recorder(cancel_after_s=0.5)
    out, took = _timed(search_scenes, _request(faults.url("hang")), progress)  # default deadline: 60 s
    assert isinstance(out, Cancelled), out
    assert time.monotonic() - progress.cancelled_at < 1.0  # Cancel took effect within a second
    assert took < BOUND_S
    assert not _workers_left()  # the blocked read was ended, not abandoned


@pytest.mark.fault("stac", "error")
def test_deadline_is_for_the_whole_answer_not_per_byte(faults):
    out, took = _timed(search_scenes, _request(faults.url("trickle"), timeout=2.0))
    assert isinstance(out, SearchError) and "did not answer within 2 s" in str(out), out
    assert took < BOUND_S
    assert not _workers_left()


@pytest.mark.fault("stac", "behaves")
def test_retry_after_is_capped_at_60_s_and_said(faults):
    progress = Recorder(cancel_on="waiting 60 s instead")
    out, took = _timed(search_scenes, _request(faults.url("retryafter")), progress)
    assert isinstance(out, Cancelled), out
    assert progress.warnings == [
        "The STAC API asked to wait 3600 s before trying again (Retry-After); "
        "waiting 60 s instead, the longest this plugin waits."
    ]
    assert time.monotonic() - progress.cancelled_at < 1.0 and took < BOUND_S  # the wait itself is cancellable


@pytest.mark.fault("stac", "error")
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


@pytest.mark.fault("stac", "error")
def test_next_link_back_to_page_1_is_a_loop(faults):
    before = faults.hits["loop/search"]
    out, took = _timed(search_scenes, _request(faults.url("loop")))
    assert isinstance(out, SearchError), out
    assert str(out).startswith(
        f"The STAC API at 127.0.0.1:{faults.port} sent page 3 with the same items as page 1: its paging goes "
        "round in a loop, so the search stopped after 3 pages and 30 items rather than run forever."
    )
    assert faults.hits["loop/search"] - before == 3 and took < BOUND_S


@pytest.mark.fault("stac", "error")
def test_next_link_to_itself_is_a_loop(faults):
    out, _ = _timed(search_scenes, _request(faults.url("selfloop")))
    assert isinstance(out, SearchError), out
    assert "sent a 'next' link on page 2 back to page 2: its paging goes round in a loop" in str(out)


@pytest.mark.fault("stac", "error", memory=True)
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


@pytest.mark.fault("stac", "error")
def test_a_count_beyond_the_bound_fails_at_the_first_page(faults):
    before = faults.hits["huge/search"]
    out, _ = _timed(search_scenes, _request(faults.url("huge")))
    assert isinstance(out, SearchError), out
    assert str(out) == (
        f"The STAC API at 127.0.0.1:{faults.port} matched 1,000,000,000 items for this search, more than the 50,000 "
        "this plugin accepts for one search. Narrow the area or the period, or set a maximum number of scenes."
    )
    assert faults.hits["huge/search"] - before == 1  # no second page


@pytest.mark.fault("stac", "error")
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


@pytest.mark.fault("stac", "error")
def test_redirect_to_another_host_is_refused_before_it_is_followed(faults):
    other_before = faults.other.hits["ok"]
    out, _ = _timed(search_scenes, _request(faults.url("redirect")))
    assert isinstance(out, SearchError), out
    assert f"redirected a request to another address (127.0.0.1:{faults.other.port})" in str(out)
    assert faults.other.hits["ok"] == other_before


@pytest.mark.fault("stac", "behaves")
def test_redirect_within_the_api_is_followed(faults):
    result = search_scenes(_request(faults.url("sameredirect")))
    assert len(result.scenes) == result.matched == 30


@pytest.mark.fault("stac", "error")
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


@pytest.mark.fault("stac", "error")
def test_an_empty_page_midway_is_an_incomplete_search(faults):
    out, _ = _timed(search_scenes, _request(faults.url("emptymid")))
    assert isinstance(out, SearchError), out
    assert str(out) == (
        f"The search at 127.0.0.1:{faults.port} is incomplete: the server matched 586 items but sent only 200 "
        "(its page 3 was empty). Nothing was kept, since a shorter list would give wrong figures; try again "
        "later, or narrow the period."
    )


@pytest.mark.fault("stac", "behaves")
def test_an_empty_page_with_a_next_link_does_not_end_the_search(faults):
    result = search_scenes(_request(faults.url("emptycontinue")))
    assert len(result.scenes) == result.matched == result.returned == 586


@pytest.mark.fault("stac", "error")
def test_area_outside_every_scene_is_named(faults):
    """The fault server ignores the area, as some servers do: every scene is dropped on the client."""
    out, _ = _timed(search_scenes, _request(faults.url("ok"), bbox=(-3.5, 55.9, -3.4, 56.0)))
    assert isinstance(out, SearchError), out
    assert str(out) == (
        f"The area (-3.5, 55.9, -3.4, 56.0) (longitude/latitude) lies outside the footprint of every one of the 30 "
        f"scenes the STAC API at 127.0.0.1:{faults.port} returned: no scene covers it. Check the area's coordinates "
        "and CRS."
    )


@pytest.mark.fault("stac", "error")
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


@pytest.mark.fault("stac", "error")
def test_unknown_host_name_in_plain_words():
    out, took = _timed(search_scenes, _request("https://no-such-host.invalid/v1"))
    assert isinstance(out, SearchError), out
    assert str(out).startswith("Cannot reach the STAC API at no-such-host.invalid: no computer of that name could be found.")
    assert took < BOUND_S


@pytest.mark.fault("stac", "error")
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


@pytest.mark.fault("stac", "error", memory=True)
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


@pytest.mark.fault("stac", "error", memory=True)
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


@pytest.mark.fault("stac", "error")
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


@pytest.mark.fault("stac", "behaves")
def test_cancel_while_the_api_root_is_read_again(realdata):
    """Cancel while pystac-client reads the API's root a second time (resolving its links): Cancel, not
    pystac's "does not resolve to a STAC object" (issue 23), and no request thread left."""
    with FaultServer(_items(realdata, 30)) as server:
        answer = server.dispatch
        roots = []

        def second_root_hangs(handler, body):
            if urlsplit(handler.path).path.rstrip("/") == "/ok":
                roots.append(handler.path)
                if len(roots) >= 2:
                    server.stop.wait(30)
                    return None
            return answer(handler, body)

        server.dispatch = second_root_hangs
        out, took = _timed(search_scenes, _request(server.url("ok")), progress=Recorder(cancel_after_s=0.5))
    assert isinstance(out, Cancelled), repr(out)
    assert len(roots) >= 2 and took < 3.0
    assert not _workers_left()


# --- STAC search through cloudprob:searchscenes ---------------------------------------------


def _run_search(faults, tmp_path, feedback=None, **params):
    from qgis import processing

    out = tmp_path / "scenes.gpkg"
    west, south, east, north = BBOX
    base = {
        "STAC_URL": faults.url("ok"), "COLLECTION": "sentinel-2-l2a",
        "AOI": f"{west},{east},{south},{north} [EPSG:4326]",
        "START_DATE": DAY.isoformat(), "END_DATE": DAY.isoformat(), "OUTPUT": str(out),
    }
    base.update(params)
    return processing.run("cloudprob:searchscenes", base, feedback=feedback), out


@pytest.mark.fault("stac", "error")
def test_searchscenes_url_without_scheme(provider, faults, tmp_path):
    from qgis.core import QgsProcessingException

    with pytest.raises(QgsProcessingException, match="has no 'https://' at its start: write it as 'https://127.0.0.1"):
        _run_search(faults, tmp_path, STAC_URL=f"127.0.0.1:{faults.port}/ok")
    assert not (tmp_path / "scenes.gpkg").exists()


@pytest.mark.fault("stac", "behaves")
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


@pytest.mark.fault("stac", "error")
def test_searchscenes_incomplete_search_writes_nothing(provider, faults, tmp_path):
    from qgis.core import QgsProcessingException

    with pytest.raises(QgsProcessingException, match="the server matched 586 items but sent only 200"):
        _run_search(faults, tmp_path, STAC_URL=faults.url("emptymid"))
    assert not (tmp_path / "scenes.gpkg").exists()


@pytest.mark.fault("stac", "error")
def test_searchscenes_area_outside_every_scene(provider, faults, tmp_path):
    """A server that ignores the area (the fault server does) returns scenes elsewhere: all are
    dropped on the client, and the message says the area is outside every footprint."""
    from qgis.core import QgsProcessingException

    with pytest.raises(QgsProcessingException, match=r"lies outside the footprint of every one of the 30 scenes"):
        _run_search(faults, tmp_path, AOI="-3.5,-3.4,55.9,56.0 [EPSG:4326]")
    assert not (tmp_path / "scenes.gpkg").exists()


# --- Inputs: the area ----------------------------------------------------------------------


@pytest.mark.fault("inputs", "error")
def test_extent_in_bbox_order_is_refused_with_the_fix(provider, faults, tmp_path):
    from qgis.core import QgsProcessingException

    before = faults.hits["ok"]
    with pytest.raises(QgsProcessingException) as caught:
        _run_search(faults, tmp_path, AOI="500000,150000,560000,210000 [EPSG:27700]")
    # refused by checkParameterValues, before the run: processing.run puts its own first line before it
    assert str(caught.value).splitlines()[-1] == (
        "In the extent '500000,150000,560000,210000 [EPSG:27700]', xmin 500000 is greater than xmax 150000: QGIS "
        "would silently swap them and use 350 × 350 km. These numbers look like bbox order (xmin,ymin,xmax,ymax); "
        "QGIS reads an extent as xmin,xmax,ymin,ymax. Did you mean '500000,560000,150000,210000 [EPSG:27700]' "
        "(60 × 60 km)?"
    )
    assert not (tmp_path / "scenes.gpkg").exists() and faults.hits["ok"] == before  # refused before any request


@pytest.mark.fault("inputs", "error")
def test_lonlat_extent_in_bbox_order_beyond_90_degrees(provider, faults, tmp_path):
    from qgis.core import QgsProcessingException

    with pytest.raises(QgsProcessingException, match=r"latitudes -119…36, beyond ±90°.*Did you mean '-120,-119,35,36 \[EPSG:4326\]'"):
        _run_search(faults, tmp_path, AOI="-120,35,-119,36 [EPSG:4326]")


@pytest.mark.fault("inputs", "behaves")
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
    # bbox order typed in QGIS's dialog reaches the algorithm with each pair put in order: the
    # order typed is lost, so both boxes the numbers can be are offered (here both are places)
    assert feedback.warnings[0] == (
        f"The extent '{text}' is read as xmin,xmax,ymin,ymax: x 19.5…29.65, y 19.6…29.75 (10.15° × 10.15°). "
        "Its corners lie near the line x = y, as those of a small box given in bbox order (xmin,ymin,xmax,ymax) "
        "do, also once QGIS has put each pair in order (its dialog does). If you meant a box of 0.1° × 0.1°, stop "
        "and give either '19.5,19.6,29.65,29.75 [EPSG:4326]' (x 19.5…19.6, y 29.65…29.75) or "
        "'29.65,29.75,19.5,19.6 [EPSG:4326]' (x 29.65…29.75, y 19.5…19.6) instead."
    )
    assert len(feedback.warnings) == 1  # said once, though checked before the run and at its start


@pytest.mark.fault("inputs", "error")
@pytest.mark.parametrize("aoi", ["19.5,19.5,29.65,29.75 [EPSG:4326]", "19.5,19.6,29.7,29.7 [EPSG:4326]"])
def test_zero_area_extent_is_refused(provider, faults, tmp_path, aoi):
    from qgis.core import QgsProcessingException

    with pytest.raises(QgsProcessingException, match=r"has no area \(zero width or height\): give an area, not a point or a line"):
        _run_search(faults, tmp_path, AOI=aoi)
    assert not (tmp_path / "scenes.gpkg").exists()


@pytest.mark.fault("inputs", "behaves")
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


@pytest.mark.fault("inputs", "error")
@pytest.mark.parametrize("aoi, message", [
    ("500000,150000,560000,210000 [EPSG:27700]",
     r"xmin 500000 is greater than xmax 150000: QGIS would silently swap them and use 350 × 350 km\..*"
     r"Did you mean '500000,560000,150000,210000 \[EPSG:27700\]' \(60 × 60 km\)\?"),
    ("533000,533000,172000,184000 [EPSG:27700]", r"has no area \(zero width or height\)"),
])
def test_cloudfrequency_refuses_the_extent_before_any_work(provider, scenes_gpkg, tmp_path, aoi, message):
    from qgis import processing
    from qgis.core import QgsProcessingException

    outputs = _frequency_outputs(tmp_path)
    start = time.monotonic()
    with pytest.raises(QgsProcessingException, match=message):
        processing.run("cloudprob:cloudfrequency", {
            "SCENES": str(scenes_gpkg), "AOI": aoi, "TARGET_CRS": "EPSG:27700", "RESOLUTION": 20, **outputs})
    assert time.monotonic() - start < BOUND_S
    assert not any(p.exists() for p in map(__import__("pathlib").Path, outputs.values()))
    assert list(tmp_path.iterdir()) == []  # not even a temporary part file


@pytest.mark.fault("inputs", "error")
def test_screenscenes_refuses_a_zero_area_extent(provider, scenes_gpkg, tmp_path):
    from qgis import processing
    from qgis.core import QgsProcessingException

    out = tmp_path / "screened.gpkg"
    with pytest.raises(QgsProcessingException, match=r"has no area \(zero width or height\): give an area"):
        processing.run("cloudprob:screenscenes", {
            "SCENES": str(scenes_gpkg), "AOI": "19.5,19.6,29.7,29.7 [EPSG:4326]", "OUTPUT": str(out)})
    assert not out.exists()


@pytest.mark.fault("inputs", "error")
def test_an_area_geometry_without_area_is_refused(qgis_app):
    """area_geometry (screenscenes' polygons, cloudmask's extent) refuses a flat area. (A layer of
    flat polygons does not get that far: QGIS's own invalid-geometry check stops it first.)"""
    from qgis.core import QgsCoordinateReferenceSystem, QgsGeometry, QgsProcessingContext, QgsProcessingException

    from cloud_probability.processing_provider.common import area_geometry

    flat = QgsGeometry.fromWkt("POLYGON((19.5 29.7, 19.6 29.7, 19.55 29.7, 19.5 29.7))").makeValid()
    with pytest.raises(QgsProcessingException, match=r"has no area \(zero width or height, or polygons without area\)"):
        area_geometry(flat, QgsCoordinateReferenceSystem("EPSG:4326"), QgsProcessingContext())


# --- COG reads -----------------------------------------------------------------------------
# The native COG reader (core.cog over core.http) and reading.open_source against a loopback
# server serving real COG bytes, each path a different misbehaviour. Screening reads four good
# products and one faulty one, each its own acquisition: the faulty one must be named with its
# cause, the four others must be exactly what they are without it, memory must stay bounded.

import ipaddress  # noqa: E402
import ssl  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import zlib  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

COG_ORIGIN = (300000.0, 5700000.0)  # EPSG:32631, 20 m pixels, 1024 × 1024
COG_AREA_BOUNDS = (302010.0, 5682010.0, 317990.0, 5697990.0)
COG_GOOD = ("A", "B", "C", "D")


def _scl_like(seed: int) -> np.ndarray:
    """An SCL-like raster: patches of real classes, a no-data corner."""
    rng = np.random.default_rng(seed)
    coarse = rng.choice(np.array([4, 5, 6, 8, 9, 10, 3, 7], np.uint8), size=(32, 32))
    data = np.kron(coarse, np.ones((32, 32), np.uint8))
    data[:100, :150] = 0
    return data


def _write_cog(path: Path, data: np.ndarray) -> Path:
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.shutil import copy as rio_copy

    tmp = path.with_suffix(".src.tif")
    profile = dict(driver="GTiff", width=data.shape[1], height=data.shape[0], count=1, dtype=data.dtype.name,
                   crs="EPSG:32631", transform=from_origin(*COG_ORIGIN, 20.0, 20.0), nodata=0)
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(data, 1)
    rio_copy(tmp, path, driver="COG", BLOCKSIZE=256, COMPRESS="DEFLATE", OVERVIEWS="NONE")
    tmp.unlink()
    return path


def _tiff(width: int, height: int, tile_w: int, tile_h: int, tiles: list[bytes], geokeys=None,
          drop: tuple[int, ...] = ()) -> bytes:
    """A little-endian classic TIFF written by hand (what GDAL would never write): one band of
    uint8, one DEFLATE tile as given, GeoTIFF tags for EPSG:32631; ``drop`` leaves tags out."""
    assert len(tiles) == 1
    keys = geokeys if geokeys is not None else [1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32631]
    tags = {
        256: (4, [width]), 257: (4, [height]), 258: (3, [8]), 259: (3, [8]), 277: (3, [1]),
        322: (4, [tile_w]), 323: (4, [tile_h]), 324: (4, [0] * len(tiles)), 325: (4, [len(t) for t in tiles]),
        339: (3, [1]), 33550: (12, [20.0, 20.0, 0.0]), 33922: (12, [0.0, 0.0, 0.0, *COG_ORIGIN, 0.0]),
        34735: (3, keys), 42113: (2, b"0\0"),
    }
    tags = {k: v for k, v in sorted(tags.items()) if k not in drop}
    codes = {3: "H", 4: "I", 12: "d"}
    ifd_size = 2 + 12 * len(tags) + 4
    extra_at = 8 + ifd_size
    blobs, entries = [], []
    for tag, (typ, values) in tags.items():
        raw = values if typ == 2 else struct.pack(f"<{len(values)}{codes[typ]}", *values)
        entries.append([tag, typ, len(values), raw])
    for entry in entries:  # out-of-line values after the IFD
        if len(entry[3]) > 4:
            entry.append(extra_at + sum(len(b) for b in blobs))
            blobs.append(entry[3] + b"\0" * (len(entry[3]) % 2))
    data_at = extra_at + sum(len(b) for b in blobs)
    offsets, at = [], data_at
    for tile in tiles:
        offsets.append(at)
        at += len(tile)
    for entry in entries:
        if entry[0] == 324:  # one tile: its offset is stored in the entry itself
            entry[3] = struct.pack("<I", offsets[0])
    out = bytearray(b"II*\0" + struct.pack("<I", 8) + struct.pack("<H", len(entries)))
    for entry in entries:
        tag, typ, count, raw = entry[:4]
        value = struct.pack("<I", entry[4]) if len(raw) > 4 else raw.ljust(4, b"\0")
        out += struct.pack("<HHI", tag, typ, count) + value
    out += struct.pack("<I", 0)
    for blob in blobs:
        out += blob
    assert len(out) == data_at
    for tile in tiles:
        out += tile
    return bytes(out)


def _deflate(data: bytes) -> bytes:
    return zlib.compress(data, 6)


def _one_huge_tile() -> bytes:
    """A 16384² tile of zeros compressed without holding it: 256 MiB in ~260 kB."""
    z = zlib.compressobj(6)
    row = bytes(16384 * 64)
    parts = [z.compress(row) for _ in range(256)]
    parts.append(z.flush())
    return b"".join(parts)


class CogFaultServer:
    """``/<mode>/<name>.tif``: the COG ``name`` served as ``mode`` says. Counts requests by
    (method, mode) and remembers user agents. Bound to 127.0.0.1; stopped by the fixture."""

    def __init__(self, files: dict[str, bytes], tls: ssl.SSLContext | None = None):
        self.files = files
        self.hits: Counter = Counter()
        self.agents: set = set()
        self.trickled = 0  # bytes sent one at a time by "trickle"
        self.answers_cut = 0  # answers of "cut" stopped half way: the first to each range
        self.ranges_cut: set = set()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def handle(self):
                try:
                    super().handle()
                except (OSError, ssl.SSLError):
                    pass  # the client gave up on us: what several cases are about

            def do_HEAD(self):  # noqa: N802 (GDAL asks the size first)
                outer.answer(self, head=True)

            def do_GET(self):  # noqa: N802
                outer.answer(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.scheme = "https" if tls is not None else "http"
        self.port = self.server.server_address[1]
        self.twin = f"http://127.0.0.1:{self.port}"  # where "redirect-http" sends (a plain http server)
        self.thread = threading.Thread(target=self.server.serve_forever, name="cog-fault-server", daemon=True)
        self.thread.start()

    def url(self, mode: str, name: str, host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}/{mode}/{name}.tif"

    def close(self):
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def answer(self, handler, head: bool):
        parts = [p for p in urlsplit(handler.path).path.split("/") if p]
        mode, name = parts[0], parts[-1][:-4]
        self.hits[(handler.command, mode)] += 1
        self.agents.add(handler.headers.get("User-Agent", ""))
        data = self.files.get(name)
        if data is None:
            return self.plain(handler, 404, b"no such file")
        spec = handler.headers.get("Range", "")
        first, last = 0, len(data) - 1
        if spec.startswith("bytes="):
            a, _, b = spec[6:].partition("-")
            first, last = int(a), min(int(b) if b else len(data) - 1, len(data) - 1)
        if mode == "reset":  # no answer at all: the connection is dropped
            handler.close_connection = True
            handler.connection.shutdown(socket.SHUT_RDWR)
            return
        if mode.startswith("redirect-"):
            target = {"redirect-http": f"{self.twin}/good/{name}.tif",
                      "redirect-metadata": f"http://169.254.169.254/latest/meta-data/{name}.tif",
                      "redirect-linklocal6": f"http://[fe80::1]/{name}.tif",
                      "redirect-private": f"http://10.20.30.40/{name}.tif",
                      "redirect-file": f"file:///etc/{name}.tif"}[mode]
            handler.send_response(302)
            handler.send_header("Location", target)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        if mode == "claim-huge":  # a partial answer claiming 2^40 bytes, then 2 kB and silence
            handler.send_response(206)
            handler.send_header("Content-Range", f"bytes {first}-{last}/{len(data)}")
            handler.send_header("Content-Length", str(2 ** 40))
            handler.end_headers()
            handler.wfile.write(data[first:first + 2048])
            handler.wfile.flush()
            self.stop.wait(10)
            return
        if mode == "claim-512m":  # Range ignored, 512 MiB announced, 2 kB sent
            handler.send_response(200)
            handler.send_header("Content-Length", str(512 * 2 ** 20))
            handler.end_headers()
            handler.wfile.write(data[:2048])
            handler.wfile.flush()
            self.stop.wait(10)
            return
        if mode == "wrong-range" and first > 0:  # answers every later range from the start of the file
            first, last = 0, last - first
        body = data[first:last + 1]
        handler.send_response(206 if spec else 200)
        if spec:
            handler.send_header("Content-Range", f"bytes {first}-{last}/{len(data)}")
        handler.send_header("Content-Length", str(len(body)))
        handler.send_header("Accept-Ranges", "bytes")
        handler.end_headers()
        if head:
            return
        if mode == "cut":  # the first answer to each range stops half way and the connection drops
            with self.lock:
                cut = (name, first, last) not in self.ranges_cut and len(body) > 1
                if cut:
                    self.ranges_cut.add((name, first, last))
                    self.answers_cut += 1
            if cut:
                handler.wfile.write(body[:len(body) // 2])
                handler.wfile.flush()
                handler.close_connection = True
                handler.connection.shutdown(socket.SHUT_RDWR)
                return
        if mode == "trickle":  # one byte at a time (every 0.5 s here; every 20 s in the issue)
            for i in range(len(body)):
                handler.wfile.write(body[i:i + 1])
                handler.wfile.flush()
                self.trickled += 1
                if self.stop.wait(0.5):
                    return
            return
        handler.wfile.write(body)

    @staticmethod
    def plain(handler, status: int, body: bytes):
        handler.send_response(status)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)


@pytest.fixture(scope="module")
def cog_files(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("fault-cogs")
    files = {name: _write_cog(folder / f"{name}.tif", _scl_like(i)).read_bytes() for i, name in enumerate(COG_GOOD)}
    files["E"] = _write_cog(folder / "E.tif", _scl_like(99)).read_bytes()  # the product that misbehaves
    files["bigtile"] = _tiff(16384, 16384, 16384, 16384, [_one_huge_tile()])
    tile = _deflate(_scl_like(5)[:256, :256].tobytes())
    files["notilewidth"] = _tiff(256, 256, 256, 256, [tile], drop=(256,))
    files["zerotile"] = _tiff(256, 256, 0, 0, [tile])
    files["shortgeokeys"] = _tiff(256, 256, 256, 256, [tile], geokeys=[1, 1, 0, 3, 1024, 0, 1, 1])
    files["E-flipped"] = _flipped(files["E"])
    return {"folder": folder, "bytes": files}


def _flipped(cog: bytes) -> bytes:
    """``cog`` with one bit flipped inside its first tile, at a place where the old reader
    (zlib stopping at the output length, before the checksum) returned wrong pixels silently."""
    from rasterio.io import MemoryFile

    with MemoryFile(cog) as mem, mem.open() as ds:
        offset = int(ds.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1))
        size = int(ds.get_tag_item("BLOCK_SIZE_0_0", "TIFF", bidx=1))
    tile = cog[offset:offset + size]
    good = zlib.decompress(tile)
    for bit in range(8 * 40, 8 * (size - 8)):
        bad = bytearray(tile)
        bad[bit // 8] ^= 1 << (bit % 8)
        try:
            silent = zlib.decompressobj().decompress(bytes(bad), len(good))
        except zlib.error:
            continue
        if len(silent) == len(good) and silent != good:
            return cog[:offset] + bytes(bad) + cog[offset + size:]
    raise AssertionError("no silently wrong flip found")


@pytest.fixture(scope="module")
def cog_server(cog_files):
    server = CogFaultServer(cog_files["bytes"])
    yield server
    server.close()


def _cog_item(i: int, href: str, links: list | None = None, geometry: dict | None = None) -> dict:
    return {
        "type": "Feature", "id": f"PRODUCT_{i}", "collection": "sentinel-2-l2a", "geometry": geometry,
        "properties": {"datetime": f"2024-06-{i + 1:02d}T10:30:00Z", "platform": "sentinel-2a"},
        "assets": {"scl": {"href": href}}, "links": links or [],
    }


def _cog_scene(i: int, href: str, links: list | None = None, geometry: dict | None = None):
    from cloud_probability.core.stac import normalise_item

    return normalise_item(_cog_item(i, href, links, geometry))


def _cog_screen(scenes, progress=None, concurrency: int = 8) -> dict:
    """{item id: (fractions, error)} of a screening of ``scenes`` over the test area."""
    from shapely.geometry import box

    from cloud_probability.core.masks import PRESETS
    from cloud_probability.core.reading import clear_http_cache
    from cloud_probability.core.screening import screen_scenes

    clear_http_cache()
    result = screen_scenes(scenes, box(*COG_AREA_BOUNDS), 32631, PRESETS["scl"], concurrency=concurrency,
                           progress=progress)
    return {o.scene.item_id: (o.fractions, o.error) for o in result.observations}


def _good_scenes(server, links=None) -> list:
    return [_cog_scene(i, server.url("good", name), links) for i, name in enumerate(COG_GOOD)]


@pytest.fixture(scope="module")
def cog_baseline(cog_server) -> dict:
    """The four good products screened with nothing wrong anywhere."""
    out = _cog_screen(_good_scenes(cog_server))
    assert all(err is None and f is not None and f.cloud_pct is not None for f, err in out.values())
    return out


def _with_fault(server, baseline: dict, href: str, progress=None) -> tuple[str, float, int]:
    """Screen the four good products and one at ``href``; the good ones must be exactly the
    baseline. Returns (the faulty one's error, seconds, peak bytes traced)."""
    scenes = _good_scenes(server) + [_cog_scene(9, href)]
    tracemalloc.start()
    t0 = time.monotonic()
    try:
        out = _cog_screen(scenes, progress)
        took = time.monotonic() - t0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    fractions, error = out.pop("PRODUCT_9")
    assert out == baseline, "the other products changed"
    assert fractions is None and error, f"the faulty product was not named: {fractions}"
    return error, took, peak


@pytest.mark.fault("cog", "behaves", memory=True)
@pytest.mark.parametrize("mode, announced", [("claim-huge", 2 ** 40), ("claim-512m", 512 * 2 ** 20)])
def test_claimed_content_length_is_never_allocated(cog_server, cog_baseline, cog_files, mode, announced):
    """2^40 bytes announced on a 206 (was a MemoryError ending the run) and 512 MiB announced
    by a server ignoring Range (was 2.2 GB peak for 2 kB received): refused from the headers."""
    error, took, peak = _with_fault(cog_server, cog_baseline, cog_server.url(mode, "E"))
    # the header's range, up to the file's end; a whole file (Range ignored) up to one answer's limit
    accepted = min(16384, len(cog_files["bytes"]["E"])) if mode == "claim-huge" else 32 * 2 ** 20
    assert error == (f"{cog_server.url(mode, 'E')}: the server announces {announced:,} bytes, more "
                     f"than the {accepted:,} this read accepts")
    assert peak < 64 * 2**20 and took < BOUND_S


@pytest.mark.fault("cog", "behaves")
def test_claimed_content_length_leaves_the_frequency_run_whole(cog_server, tmp_path):
    """Through the frequency stage: the run ends, the product is listed as unreadable, the
    outputs are exactly those of the run without it, no partial file is left."""
    import rasterio
    from rasterio.transform import from_origin

    from cloud_probability.core.frequency import cloud_frequency
    from cloud_probability.core.masks import PRESETS
    from cloud_probability.core.reading import Grid, clear_http_cache

    grid = Grid("EPSG:32631", from_origin(302000.0, 5698000.0, 20.0, 20.0), (800, 800))

    def run(scenes, folder: Path):
        folder.mkdir()
        outputs = {k: str(folder / f"{k}.tif") for k in ("probability", "valid", "cloudy")}
        clear_http_cache()
        result = cloud_frequency(scenes, grid, PRESETS["scl"], outputs, tile_px=512, cache_dir=folder / "cache")
        arrays = {}
        for key, path in outputs.items():
            with rasterio.open(path) as ds:
                arrays[key] = ds.read()
        return result, arrays

    _, without = run(_good_scenes(cog_server), tmp_path / "without")
    faulty = _good_scenes(cog_server) + [_cog_scene(9, cog_server.url("claim-huge", "E"))]
    result, with_fault = run(faulty, tmp_path / "with")
    for key in without:
        assert np.array_equal(without[key], with_fault[key], equal_nan=True), key
    listed = "".join(p.read_text() for p in (tmp_path / "with").glob("*unreadable.csv"))
    assert "PRODUCT_9" in listed and "announces 1,099,511,627,776 bytes" in listed
    assert not [p for p in (tmp_path / "with").rglob("*") if ".part" in p.name]


@pytest.mark.fault("cog", "behaves", memory=True)
def test_one_huge_tile_is_refused_before_it_is_decoded(cog_server, cog_baseline, cog_files):
    """A 260 kB COG holding one 16384² tile (peaked at 794 MB): refused from its header."""
    assert len(cog_files["bytes"]["bigtile"]) < 300_000
    error, took, peak = _with_fault(cog_server, cog_baseline, cog_server.url("good", "bigtile"))
    assert error == (f"{cog_server.url('good', 'bigtile')}: tiles of 16384×16384 pixels (256 MiB each), more than "
                     "the 16 MiB per tile this plugin decodes")
    assert peak < 64 * 2**20 and took < BOUND_S


@pytest.mark.fault("cog", "behaves")
def test_a_trickling_server_meets_the_deadline(cog_server, cog_baseline, monkeypatch):
    """One byte every 0.5 s never trips a per-byte timeout; the whole request's deadline
    (CLOUDPROB_HTTP_TIMEOUT, 2 s here) ends it."""
    monkeypatch.setenv("CLOUDPROB_HTTP_TIMEOUT", "2")
    before = cog_server.trickled
    error, took, _ = _with_fault(cog_server, cog_baseline, cog_server.url("trickle", "E"))
    assert error == f"{cog_server.url('trickle', 'E')}: no complete answer within 2 s"
    assert 2.0 <= took < 5.0
    assert cog_server.trickled - before >= 3  # bytes kept coming, each well within a per-byte timeout


class _CancelAfter(NullProgress):
    def __init__(self, seconds: float):
        self.at = time.monotonic() + seconds

    def is_canceled(self):
        return time.monotonic() >= self.at


@pytest.mark.fault("cog", "behaves")
def test_cancel_stops_reads_in_flight(cog_server):
    """Cancel 0.5 s into reads that would take minutes (the deadline is the default 60 s):
    screening stops within about a second and no request is left running."""
    from cloud_probability.core import http as cphttp

    scenes = [_cog_scene(i, cog_server.url("trickle", name)) for i, name in enumerate(COG_GOOD)]
    t0 = time.monotonic()
    with pytest.raises(Cancelled):
        _cog_screen(scenes, _CancelAfter(0.5))
    assert time.monotonic() - t0 < 1.7
    deadline = time.monotonic() + 1.0
    while cphttp._WATCHDOG._requests and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not cphttp._WATCHDOG._requests, "requests still in flight after Cancel"


def _screening_threads_left(timeout: float) -> list[threading.Thread]:
    end = time.monotonic() + timeout
    while True:
        alive = [t for t in threading.enumerate()
                 if t.name.startswith(("cloudprob-read", "cloudprob-screen")) and t.is_alive()]
        if not alive or time.monotonic() > end:
            return alive
        time.sleep(0.05)


@pytest.mark.fault("cog", "behaves")
def test_cancel_leaves_no_screening_thread_behind(cog_server):
    """Cancel while acquisitions of four products each wait on their products' reads (a slow server,
    two threads, so reads are still queued): Cancel returns, and every reading and screening thread
    ends. Before, a thread waiting on a product read that the shutdown cancelled before it ran waited
    forever (concurrent.futures tells waiters of such a cancel only when a worker picks the read up),
    and the process could not exit."""
    items = []
    for k in range(8):
        for j, name in enumerate(COG_GOOD):
            item = _cog_item(10 * k + j, cog_server.url("trickle", name))
            item["properties"]["datetime"] = f"2024-06-{k + 1:02d}T10:30:00Z"  # one datatake of 4 products
            item["id"] = f"PRODUCT_{k}_{j}"
            items.append(item)
    from cloud_probability.core.stac import normalise_item

    scenes = [normalise_item(i) for i in items]
    assert len({s.datatake_id for s in scenes}) == 8
    t0 = time.monotonic()
    with pytest.raises(Cancelled):
        _cog_screen(scenes, _CancelAfter(0.5), concurrency=2)
    assert time.monotonic() - t0 < 2.5
    left = _screening_threads_left(5.0)
    assert not left, f"{len(left)} screening threads still alive after Cancel: {[t.name for t in left]}"


@pytest.mark.fault("cog", "behaves")
def test_waiting_on_reads_a_shutdown_cancelled_returns():
    """The stdlib behaviour behind the screening threads left blocked: a read still queued when its pool
    is shut down with cancel_futures=True is cancelled without its waiters being told, so
    ``concurrent.futures.wait`` does not return for it; :func:`core.screening.wait_all` does."""
    import concurrent.futures as cf

    from cloud_probability.core.screening import wait_all

    release = threading.Event()
    pool = cf.ThreadPoolExecutor(max_workers=1)
    running = pool.submit(release.wait, 5)
    queued = pool.submit(time.sleep, 0)
    pool.shutdown(wait=False, cancel_futures=True)
    assert queued.cancelled()
    _, not_done = cf.wait([queued], timeout=0.3)
    assert not_done == {queued}  # what datatake_mask_on_grid used to wait on forever
    release.set()
    t0 = time.monotonic()
    waiter = threading.Thread(target=wait_all, args=([running, queued],), daemon=True)
    waiter.start()
    waiter.join(2.0)
    assert not waiter.is_alive() and time.monotonic() - t0 < 2.0


@pytest.mark.fault("cog", "behaves")
def test_a_body_cut_short_is_retried(cog_server, cog_baseline):
    """The first answer to each range stops half way through its announced Content-Length and the
    connection drops: urllib3 1.26 returns such a body without a word (a 206 with half the bytes), which made the
    product unreadable and was never retried (issue 23). A short body is a transport failure, retried
    like one: the screening is the baseline exactly, and the server saw the retries."""
    before = cog_server.hits[("GET", "cut")]
    out = _cog_screen([_cog_scene(i, cog_server.url("cut", name)) for i, name in enumerate(COG_GOOD)])
    assert out == cog_baseline
    assert cog_server.answers_cut >= len(COG_GOOD)
    assert cog_server.hits[("GET", "cut")] - before == 2 * cog_server.answers_cut  # each cut one asked again, once


@pytest.mark.fault("cog", "behaves", memory=True)
@pytest.mark.parametrize("pixel", [(20.0, -1e-6), (1e-6, -1e-6), (1e6, -1e6), (20.0, -10.0)])
def test_absurd_projection_metadata_names_the_product_and_bounds_memory(cog_server, cog_baseline, pixel):
    """A catalogue's proj:transform with pixels of 20 m × 1 µm, 1 µm, 1000 km, or not square: the grid it
    implies is absurd (before, 20 m × 1 µm made the screening allocate 15 GiB and MemoryError ended the
    whole screening; 1 µm and 1000 km gave wrong numbers without a word). That product is unreadable and
    named, the others are read as usual, and memory stays bounded by the area."""
    a, e = pixel
    bad = _cog_item(9, cog_server.url("good", "E"))
    bad["assets"]["scl"].update({"proj:transform": [a, 0.0, COG_ORIGIN[0], 0.0, e, COG_ORIGIN[1]],
                                 "proj:shape": [800, 800], "proj:epsg": 32631})
    from cloud_probability.core.stac import normalise_item

    tracemalloc.start()
    try:
        t0 = time.monotonic()
        out = _cog_screen(_good_scenes(cog_server) + [normalise_item(bad)])
        took, peak = time.monotonic() - t0, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    fractions, error = out.pop("PRODUCT_9")
    assert out == cog_baseline and fractions is None
    assert error.startswith("PRODUCT_9: its catalogue's proj:transform and proj:shape describe pixels of "), error
    assert "not read" in error
    assert peak < 300e6 and took < BOUND_S


@pytest.mark.fault("cog", "behaves")
def test_the_gdal_path_says_it_cannot_verify_deflate(cog_server, monkeypatch, caplog):
    """With CLOUDPROB_NATIVE_COG=NO a tile with a flipped bit decodes through GDAL without an error
    (GDAL's TIFF reader does not reach the zlib checksum), where the plugin's reader refuses it (issue 23).
    The GDAL path cannot verify: it says so, once per host, in the run's log."""
    import logging

    from cloud_probability.core import reading

    flipped = [_cog_scene(0, cog_server.url("good", "E-flipped"))]
    native = _cog_screen(flipped)["PRODUCT_0"]
    assert native[0] is None and "corrupt DEFLATE tile" in native[1]
    monkeypatch.setenv("CLOUDPROB_NATIVE_COG", "NO")
    monkeypatch.setattr(reading, "_UNVERIFIED_SAID", set())
    with caplog.at_level(logging.WARNING, logger="cloud_probability"):
        through_gdal = _cog_screen(flipped + [_cog_scene(1, cog_server.url("good", "A"))])
    assert through_gdal["PRODUCT_0"][1] is None  # read, unverified: what the warning is about
    said = [r.getMessage() for r in caplog.records if "does not verify the DEFLATE checksums" in r.getMessage()]
    assert said == [f"127.0.0.1:{cog_server.port} is read through GDAL, which does not verify the DEFLATE checksums "
                    "of its tiles: a corrupted tile would give wrong pixels without an error (the plugin's own reader, "
                    "used unless CLOUDPROB_NATIVE_COG=NO or the layout needs GDAL, refuses such tiles)."]


@pytest.mark.fault("cog", "error")
def test_corrupt_deflate_is_an_error_never_wrong_pixels(realdata, monkeypatch):
    """Bits flipped one at a time in a tile made of the real sen2r SCL (and in its checksum),
    inflated by libdeflate and by zlib alone: each gives an error or exactly the right bytes."""
    import rasterio

    from cloud_probability.core import cog

    with rasterio.open(realdata / "sen2r_barbellino" / "S2A2A_20170703_022_Barbellino_SCL_10.tif") as ds:
        scl = ds.read(1)
    tile = np.resize(scl, (256, 256)).astype(np.uint8).tobytes()
    packed = _deflate(tile)
    rng = np.random.default_rng(3)
    bits = sorted(set(range(8 * 64)) | set(range(8 * (len(packed) - 6), 8 * len(packed)))
                  | set(rng.integers(0, 8 * len(packed), 1500).tolist()))
    for libdeflate in (cog._LIBDEFLATE, None):
        monkeypatch.setattr(cog, "_LIBDEFLATE", libdeflate)
        errors = wrong = 0
        for bit in bits:
            bad = bytearray(packed)
            bad[bit // 8] ^= 1 << (bit % 8)
            try:
                out = bytes(cog.inflate(bytes(bad), len(tile), "http://x/SCL.tif"))
            except cog.Unreadable as exc:
                assert str(exc).startswith("http://x/SCL.tif: corrupt DEFLATE tile"), exc
                errors += 1
                continue
            wrong += out != tile
        # a flip that decodes to the same bytes (a padding bit) is harmless; any other is an error
        assert wrong == 0 and errors >= 0.95 * len(bits), (libdeflate, errors, wrong, len(bits))


@pytest.mark.fault("cog", "behaves")
def test_a_corrupt_tile_names_its_product(cog_server, cog_baseline):
    """One flipped bit in a served COG, chosen where the old reader gave wrong pixels silently."""
    error, took, _ = _with_fault(cog_server, cog_baseline, cog_server.url("good", "E-flipped"))
    assert error.startswith(f"{cog_server.url('good', 'E-flipped')}: corrupt DEFLATE tile (")
    assert took < BOUND_S


@pytest.mark.fault("cog", "behaves")
@pytest.mark.parametrize("name, expected", [
    ("notilewidth", "an image without its ImageWidth tag"),
    ("zerotile", "an image of 256×256 pixels in tiles of 0×0"),
    ("shortgeokeys", "its GeoKeyDirectory declares 3 keys but holds 1"),
])
def test_malformed_headers_are_named_and_not_handed_to_gdal(cog_server, cog_baseline, name, expected):
    """Missing tags, zero tile sizes, short GeoKeys (were KeyError/ZeroDivisionError ending
    the run): a named unreadable product; GDAL is not asked (it would HEAD the file)."""
    from cloud_probability.core import reading

    before = cog_server.hits[("HEAD", "good")]
    error, took, _ = _with_fault(cog_server, cog_baseline, cog_server.url("good", name))
    assert error == f"{cog_server.url('good', name)}: {expected}"
    assert cog_server.hits[("HEAD", "good")] == before and not reading._GDAL_HOSTS
    assert took < BOUND_S


@pytest.mark.fault("cog", "behaves")
@pytest.mark.parametrize("host", ["пример.invalid", "bad host.invalid", "a" * 300 + ".invalid"])
def test_hosts_that_are_no_internet_name_are_named(cog_server, cog_baseline, host):
    """A non-Latin-1 host (escaped as a UnicodeEncodeError), a space, a label too long: the
    product is named, the run goes on."""
    href = f"http://{host}/E.tif"
    error, took, _ = _with_fault(cog_server, cog_baseline, href)
    assert error.startswith(href + ":") and took < BOUND_S


@pytest.mark.fault("cog", "behaves")
def test_one_failed_header_fetch_does_not_send_the_host_to_gdal(cog_server, cog_baseline):
    """A product whose header request gets no answer at all: named (after retries); the other
    products of the same host are still read natively (our requests, no HEAD, no GDAL)."""
    from cloud_probability.core import reading

    heads = cog_server.hits[("HEAD", "good")]
    error, took, _ = _with_fault(cog_server, cog_baseline, cog_server.url("reset", "E"))
    assert error.startswith(f"{cog_server.url('reset', 'E')}: ") and ("RemoteDisconnected" in error or "reset" in error)
    assert not reading._GDAL_HOSTS and cog_server.hits[("HEAD", "good")] == heads
    assert cog_server.hits[("GET", "reset")] == 4  # tried, then retried three times
    again = _cog_screen(_good_scenes(cog_server))
    assert again == cog_baseline and cog_server.hits[("HEAD", "good")] == heads


@pytest.mark.fault("cog", "behaves")
def test_a_partial_answer_of_other_bytes_is_refused(cog_server, cog_baseline):
    """A 206 whose Content-Range is not the range asked for (was never checked)."""
    error, took, _ = _with_fault(cog_server, cog_baseline, cog_server.url("wrong-range", "E"))
    assert error.startswith(f"{cog_server.url('wrong-range', 'E')}: the server sent the bytes 0-")
    assert "for a request of " in error and took < BOUND_S


# --- untrusted catalogue -------------------------------------------------------------------
# A web catalogue's items point only to web addresses (http(s), s3, gs, az), never to this
# computer's files, link-local or cloud metadata addresses; to loopback only when the catalogue
# is on loopback itself. Local files: for a local catalogue, or with CLOUDPROB_ALLOW_LOCAL_ASSETS.

PUBLIC_CATALOGUE = "https://93.184.215.14/v1"  # any public address: never asked, only its kind counts


def _links(root: str) -> list:
    return [{"rel": "root", "href": root}, {"rel": "self", "href": root + "/collections/x/items/y"}]


@pytest.mark.fault("catalogue", "behaves")
def test_a_web_catalogue_cannot_point_to_local_files(cog_server, cog_baseline, cog_files, monkeypatch):
    """file:// hrefs, bare paths and GDAL paths from a web catalogue are refused before
    anything is opened, with the same message whether the file exists or not; the same items
    from a local catalogue, or allowed explicitly, are read."""
    monkeypatch.delenv("CLOUDPROB_ALLOW_LOCAL_ASSETS", raising=False)
    existing = str(cog_files["folder"] / "A.tif")
    missing = str(cog_files["folder"] / "nothing-here.tif")
    hrefs = ["file://" + existing, existing, "file://" + missing, missing, "A.tif",
             f"/vsicurl/http://127.0.0.1:{cog_server.port}/good/A.tif", "/vsizip//tmp/x.zip/A.tif"]
    remote = _good_scenes(cog_server, _links(f"http://127.0.0.1:{cog_server.port}/stac"))
    scenes = remote + [_cog_scene(10 + i, href, _links(PUBLIC_CATALOGUE)) for i, href in enumerate(hrefs)]
    out = _cog_screen(scenes)
    assert {k: out.pop(k) for k in cog_baseline} == cog_baseline
    for i, href in enumerate(hrefs):
        fractions, error = out[f"PRODUCT_{10 + i}"]
        assert fractions is None
        assert error == (f"{href}: refused: a file on this computer, which the catalogue at {PUBLIC_CATALOGUE} "
                         "may not point to (set CLOUDPROB_ALLOW_LOCAL_ASSETS=YES to allow it)")
    local = _cog_screen([_cog_scene(0, "file://" + existing), _cog_scene(1, existing)])
    assert local["PRODUCT_0"] == local["PRODUCT_1"] == cog_baseline["PRODUCT_0"]
    monkeypatch.setenv("CLOUDPROB_ALLOW_LOCAL_ASSETS", "YES")
    allowed = _cog_screen([_cog_scene(0, existing, _links(PUBLIC_CATALOGUE))])
    assert allowed["PRODUCT_0"] == cog_baseline["PRODUCT_0"]


@pytest.mark.fault("catalogue", "behaves")
def test_items_without_links_follow_the_api_they_were_found_in(faults, cog_server, cog_files, monkeypatch, tmp_path):
    """A STAC API whose items carry no root/self links: its items are that API's, not a local catalogue's —
    the rule follows the search, not the item's links. Its file:// hrefs, bare paths and a file:// copy of
    a good COG are refused (before, the last was read with status ok), also after the scenes went through
    the scenes layer's JSON; its loopback hrefs are read (the API is on loopback)."""
    from cloud_probability.core.reading import catalogue_of
    from cloud_probability.core.stac import scene_from_json

    monkeypatch.delenv("CLOUDPROB_ALLOW_LOCAL_ASSETS", raising=False)
    copy_of_a = tmp_path / "A.tif"
    copy_of_a.write_bytes((cog_files["folder"] / "A.tif").read_bytes())
    hrefs = ["file:///etc/passwd", "/etc/passwd", f"file://{copy_of_a}", cog_server.url("good", "A")]
    items = []
    for i, href in enumerate(hrefs):
        item = copy.deepcopy(faults.items[i])
        item["id"] = f"NOLINKS_{i}"
        item["links"] = []
        item["geometry"], item["bbox"] = None, None  # read over the test area whatever its footprint
        item["properties"]["s2:datatake_id"] = f"GS2B_20240517T0900{i:02d}_000000_N05.10"  # an acquisition each
        item["assets"] = {"scl": {"href": href, "type": "image/tiff; application=geotiff"}}
        items.append(item)
    faults.custom["nolinks"] = items
    api = faults.url("custom-nolinks")
    result = search_scenes(_request(api))
    scenes = {s.item_id: s for s in result.scenes}
    assert len(scenes) == 4
    for scene in list(scenes.values()) + [scene_from_json(s.item_json()) for s in scenes.values()]:
        assert catalogue_of(scene).url == api, scene.item_id
    out = _cog_screen(list(scenes.values()))
    for i, href in enumerate(hrefs[:3]):
        fractions, error = out[f"NOLINKS_{i}"]
        assert fractions is None and error == (
            f"{href}: refused: a file on this computer, which the catalogue at {api} may not point to "
            "(set CLOUDPROB_ALLOW_LOCAL_ASSETS=YES to allow it)"), error
    assert out["NOLINKS_3"][1] is None and out["NOLINKS_3"][0].valid_pixels > 0


@pytest.mark.fault("catalogue", "error")
def test_s2cloudless_reads_go_through_the_catalogue_checks(cog_files, monkeypatch):
    """The s2cloudless mask read its L1C bands from the raw item hrefs, so a web catalogue's file:// href
    was opened (issue 24: unchecked, unsigned). Its reads now carry the scene's catalogue like every other."""
    from cloud_probability.core.reading import ReadError, RefusedAsset
    from cloud_probability.core.s2cloudless_mask import BANDS, scene_mask

    monkeypatch.delenv("CLOUDPROB_ALLOW_LOCAL_ASSETS", raising=False)
    existing = "file://" + str(cog_files["folder"] / "A.tif")
    item = _cog_item(0, existing, _links(PUBLIC_CATALOGUE))
    item["assets"] = {band: {"href": existing} for band in BANDS}
    from cloud_probability.core.stac import normalise_item

    scene = normalise_item(item)
    with pytest.raises((RefusedAsset, ReadError)) as caught:
        scene_mask(scene, _freq_grid(COG_ORIGIN), 0.4)
    assert str(caught.value).startswith(f"{existing}: refused: a file on this computer, which the catalogue at "
                                        f"{PUBLIC_CATALOGUE} may not point to"), str(caught.value)


@pytest.mark.fault("catalogue", "behaves")
@pytest.mark.parametrize("href", ["http://169.254.169.254/latest/meta-data/iam/x.tif", "http://[fe80::1]/x.tif",
                                  "http://[::ffff:169.254.169.254]/x.tif", "http://0.0.0.0/x.tif"])
def test_metadata_and_link_local_addresses_are_never_requested(cog_server, cog_baseline, monkeypatch, href):
    """Whatever the catalogue (a web one, a local one) and even with local assets allowed."""
    monkeypatch.setenv("CLOUDPROB_ALLOW_LOCAL_ASSETS", "YES")
    for links in (_links(PUBLIC_CATALOGUE), None):
        scenes = _good_scenes(cog_server) + [_cog_scene(9, href, links)]
        t0 = time.monotonic()
        out = _cog_screen(scenes)
        assert time.monotonic() - t0 < 2.0  # refused, not tried
        fractions, error = out.pop("PRODUCT_9")
        assert out == cog_baseline and fractions is None
        assert error.startswith(f"{href}: refused: ") and error.endswith(": never read")


@pytest.mark.fault("catalogue", "behaves")
def test_loopback_assets_only_for_a_catalogue_on_loopback(cog_server, cog_baseline, monkeypatch):
    monkeypatch.delenv("CLOUDPROB_ALLOW_LOCAL_ASSETS", raising=False)
    on_loopback = _cog_screen(_good_scenes(cog_server, _links(f"http://127.0.0.1:{cog_server.port + 1}/stac")))
    assert on_loopback == cog_baseline
    before = sum(n for (method, mode), n in cog_server.hits.items() if mode == "good")
    out = _cog_screen(_good_scenes(cog_server, _links(PUBLIC_CATALOGUE)))
    assert sum(n for (method, mode), n in cog_server.hits.items() if mode == "good") == before  # nothing asked
    for i, name in enumerate(COG_GOOD):
        assert out[f"PRODUCT_{i}"] == (None, (
            f"{cog_server.url('good', name)}: refused: 127.0.0.1 is this machine (loopback), which the catalogue at "
            f"{PUBLIC_CATALOGUE} may not point to (set CLOUDPROB_ALLOW_LOCAL_ASSETS=YES to allow it)"))
    by_name = _cog_screen([_cog_scene(0, cog_server.url("good", "A", host="localhost"), _links(PUBLIC_CATALOGUE))])
    assert "refused: localhost" in by_name["PRODUCT_0"][1] and "is this machine (loopback)" in by_name["PRODUCT_0"][1]
    monkeypatch.setenv("CLOUDPROB_ALLOW_LOCAL_ASSETS", "YES")
    assert _cog_screen(_good_scenes(cog_server, _links(PUBLIC_CATALOGUE))) == cog_baseline


@pytest.fixture(scope="module")
def tls_cog_server(cog_files, tmp_path_factory):
    """The same COGs over TLS (an openssl-made certificate for 127.0.0.1)."""
    from conftest import self_signed_certificate

    cert, tls = self_signed_certificate(tmp_path_factory.mktemp("fault-tls"))
    server = CogFaultServer(cog_files["bytes"], tls)
    server.cert = cert
    yield server
    server.close()


@pytest.mark.fault("catalogue", "behaves")
def test_redirects_are_checked_like_hrefs(cog_server, tls_cog_server, cog_baseline, monkeypatch):
    """From https to plain http, to a metadata or link-local address, to another scheme: the
    product is refused and named with where it was sent; the redirect target is never asked."""
    monkeypatch.setenv("CURL_CA_BUNDLE", str(tls_cog_server.cert))
    tls_cog_server.twin = f"http://127.0.0.1:{cog_server.port}"
    links = _links(f"http://127.0.0.1:{cog_server.port}/stac")  # a catalogue on loopback: loopback assets allowed
    secure = _cog_screen([_cog_scene(0, tls_cog_server.url("good", "A"), links)])
    assert secure["PRODUCT_0"] == cog_baseline["PRODUCT_0"]  # https itself reads
    cases = {
        tls_cog_server.url("redirect-http", "A"): "refused: a redirect from https to plain http",
        cog_server.url("redirect-metadata", "A"): "169.254.169.254 is a cloud metadata address: never read",
        cog_server.url("redirect-linklocal6", "A"): "fe80::1 is a link-local address: never read",
        cog_server.url("redirect-file", "A"): "refused: a redirect to 'file:///etc/A.tif', which is not an http(s) address",
    }
    plain_gets = cog_server.hits[("GET", "good")]
    out = _cog_screen([_cog_scene(i, href, links) for i, href in enumerate(cases)])
    for i, (href, expected) in enumerate(cases.items()):
        fractions, error = out[f"PRODUCT_{i}"]
        assert fractions is None and error.startswith(href) and expected in error, error
    assert cog_server.hits[("GET", "good")] == plain_gets  # the http target of the downgrade was never asked


@pytest.mark.fault("catalogue", "error")
def test_connections_are_checked_where_they_land(cog_server):
    """core.http's own rules for a catalogue on a public address: a redirect to a private
    address is refused unasked; a name that leads to this machine is refused after connecting,
    before a byte of the request is sent."""
    from cloud_probability.core import http as cphttp

    start = cog_server.url("redirect-private", "A")
    with pytest.raises(cphttp.TransportError) as caught:
        cphttp.get(start, {"Range": "bytes=0-99"}, places=cphttp.Places(loopback=True, private=False, source="X"))
    assert caught.value.kind == "refused"
    assert str(caught.value) == (f"{start}, redirected to http://10.20.30.40/A.tif: refused: 10.20.30.40 is a "
                                 "private-network address, which X may not point to")
    gets = cog_server.hits[("GET", "good")]
    by_name = cog_server.url("good", "A", host="localhost")
    with pytest.raises(cphttp.TransportError) as caught:
        cphttp.get(by_name, {"Range": "bytes=0-99"}, places=cphttp.Places(loopback=False, source="X"))
    assert caught.value.kind == "refused" and "is this machine (loopback), which X may not point to" in str(caught.value)
    assert ipaddress.ip_address(str(caught.value).split("(")[1].split(")")[0]).is_loopback
    assert cog_server.hits[("GET", "good")] == gets  # connected, checked, nothing sent


# --- COG reads through the frequency stage -------------------------------------------------
# cloud_frequency over the four good products: 800 × 800 pixels in tiles of 512 (four tiles),
# with the spread. Every run below must give exactly the outputs of an undisturbed run.

import os  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402

FREQ_ORIGIN = (301000.0, 5699000.0)  # over the COGs, their no-data corner in it
FREQ_SHAPE = (800, 800)
FREQ_TILE = 512
FREQ_OUTPUTS = ("probability", "valid", "cloudy", "stdev")
_TILE_NAME = re.compile(r"tile_\d+_\d+_[0-9a-f]+\.npz")


def _freq_grid(origin=FREQ_ORIGIN):
    from rasterio.transform import from_origin

    from cloud_probability.core.reading import Grid

    return Grid("EPSG:32631", from_origin(*origin, 20.0, 20.0), FREQ_SHAPE)


def _freq_outputs(folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    return {k: str(folder / f"{k}.tif") for k in FREQ_OUTPUTS}


def _freq(scenes, folder: Path, cache: Path, progress=None, grid=None):
    """(result, {output: array}) of cloud_frequency writing into ``folder``, cache root ``cache``."""
    import rasterio

    from cloud_probability.core.frequency import cloud_frequency
    from cloud_probability.core.masks import PRESETS
    from cloud_probability.core.reading import clear_http_cache

    outputs = _freq_outputs(folder)
    clear_http_cache()
    result = cloud_frequency(scenes, grid or _freq_grid(), PRESETS["scl"], outputs, tile_px=FREQ_TILE,
                             cache_dir=cache, progress=progress)
    arrays = {}
    for key, path in outputs.items():
        with rasterio.open(path) as ds:
            arrays[key] = ds.read()
    return result, arrays


def _same_as(baseline: dict, arrays: dict) -> None:
    assert baseline.keys() == arrays.keys()
    for key in baseline:
        assert np.array_equal(baseline[key], arrays[key], equal_nan=True), f"{key} differs from the undisturbed run"


def _tile_files(cache: Path) -> list[Path]:
    """Finished tiles (not partial ones) in every cache folder under ``cache``."""
    return sorted(p for p in cache.glob("*/*") if _TILE_NAME.fullmatch(p.name))


def _leftovers(folder: Path) -> list[Path]:
    """Partial files anywhere under ``folder`` (``*.part-PID…``, ``*.kv-PID…``, ``*.cog-PID…``)."""
    return sorted(p for p in folder.rglob("*") if re.search(r"\.(part|kv|cog)-\d", p.name))


def _requests(server) -> int:
    return sum(server.hits.values())


@pytest.fixture(scope="module")
def freq_baseline(cog_server, tmp_path_factory) -> dict:
    """The outputs of an undisturbed run (its own cache, cleaned at its end)."""
    folder = tmp_path_factory.mktemp("freq-baseline")
    result, arrays = _freq(_good_scenes(cog_server), folder / "out", folder / "cache")
    assert result.tiles == 4 and result.tiles_resumed == 0 and not result.unreadable
    assert 0 < int((arrays["valid"] > 0).sum()) < arrays["valid"].size  # data and no data both
    assert list((folder / "cache").iterdir()) == []
    return arrays


@pytest.mark.fault("cog", "behaves")
def test_cancel_stops_the_frequency_reads_in_flight(cog_server, tmp_path):
    """Cancel 0.5 s into reads trickling a byte every 0.5 s (the deadline is the default 60 s):
    the frequency stage stops within about a second (it used to wait for the reads), no request
    is left running, nothing is written and the cache key is free for the next run."""
    from cloud_probability.core import cache as tilecache
    from cloud_probability.core import http as cphttp

    scenes = [_cog_scene(i, cog_server.url("trickle", name)) for i, name in enumerate(COG_GOOD)]
    progress = Recorder(cancel_after_s=0.5)
    with pytest.raises(Cancelled):
        _freq(scenes, tmp_path / "out", tmp_path / "cache", progress)
    assert time.monotonic() - progress.cancelled_at < 1.5
    deadline = time.monotonic() + 1.0
    while cphttp._WATCHDOG._requests and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not cphttp._WATCHDOG._requests, "requests still in flight after Cancel"
    assert list((tmp_path / "out").iterdir()) == [] and not _leftovers(tmp_path)
    locks = list((tmp_path / "cache").glob("*.lock"))
    assert len(locks) == 1
    lock = tilecache._KeyLock(locks[0])
    assert lock.acquire(exclusive=True, wait=False, progress=NullProgress()), "the cancelled run still holds its key"
    lock.release()


# --- resume cache --------------------------------------------------------------------------
# core/cache.py under the frequency stage: damaged tiles, two runs of the same inputs at once,
# a run killed with SIGKILL while it writes, an old folder in use. The outputs are always the
# undisturbed run's, nothing partial stays, and the cache is empty after the last run ends.


class _StopWhenCached(Recorder):
    """Cancels once the cache holds ``tiles`` finished tiles: every tile computed, none written out."""

    def __init__(self, cache: Path, tiles: int):
        super().__init__()
        self.cache, self.tiles = cache, tiles

    def is_canceled(self):
        return len(_tile_files(self.cache)) >= self.tiles


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[:len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    else:  # one byte in the middle of the valid counts' compressed data
        import zipfile

        with zipfile.ZipFile(path) as z:
            info = z.getinfo("valid.npy")
        name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
        at = info.header_offset + 30 + name_len + extra_len + info.compress_size // 2
        bad = bytearray(data)
        bad[at] ^= 0xFF
        path.write_bytes(bytes(bad))


@pytest.mark.fault("cache", "behaves")
@pytest.mark.parametrize("how", ["truncated", "flipped", "empty"])
def test_a_damaged_cached_tile_is_computed_again_and_named(cog_server, freq_baseline, tmp_path, how):
    """Was: BadZipFile in every later run, the cache not named."""
    scenes = _good_scenes(cog_server)
    cache = tmp_path / "cache"
    with pytest.raises(Cancelled):
        _freq(scenes, tmp_path / "first", cache, _StopWhenCached(cache, 4))
    tiles = _tile_files(cache)
    assert len(tiles) == 4 and list((tmp_path / "first").iterdir()) == []
    damaged = tiles[1]
    _damage(damaged, how)
    progress = Recorder()
    result, arrays = _freq(scenes, tmp_path / "again", cache, progress)
    _same_as(freq_baseline, arrays)
    assert result.tiles_resumed == 3  # the three others were resumed, the damaged one recomputed
    assert len(progress.warnings) == 1, progress.warnings
    assert re.fullmatch(
        re.escape(f"The resume cache {damaged.parent} holds a damaged tile, {damaged.name} (") + r"\w+: .*"
        + re.escape("); it is computed again."), progress.warnings[0], re.S), progress.warnings[0]
    assert not _leftovers(tmp_path) and list(cache.iterdir()) == []


@pytest.mark.fault("cache", "behaves")
def test_two_runs_of_the_same_inputs_at_once_keep_each_others_tiles(cog_server, freq_baseline, tmp_path):
    """Run A has finished its tiles and is paused before writing its outputs; run B of the same
    inputs (same cache) starts and ends meanwhile, resuming A's tiles. B must leave them to A,
    which still uses them (before, the first to finish deleted them and A failed); A then
    writes the same outputs and, the last one out, empties the cache."""
    scenes = _good_scenes(cog_server)
    cache = tmp_path / "cache"

    class PauseWhenCached(Recorder):
        def __init__(self):
            super().__init__()
            self.paused, self.go = threading.Event(), threading.Event()

        def is_canceled(self):
            if not self.paused.is_set() and len(_tile_files(cache)) == 4:
                self.paused.set()
                self.go.wait(60)
            return False

    a_progress = PauseWhenCached()
    outcome: dict = {}

    def run_a():
        try:
            outcome["a"] = _freq(scenes, tmp_path / "a", cache, a_progress)
        except BaseException as exc:  # noqa: BLE001 - looked at below
            outcome["a"] = exc

    thread = threading.Thread(target=run_a, name="run-a")
    thread.start()
    try:
        assert a_progress.paused.wait(60), "run A never finished its tiles"
        b_progress = Recorder()
        b_result, b_arrays = _freq(scenes, tmp_path / "b", cache, b_progress)
        _same_as(freq_baseline, b_arrays)
        assert b_result.tiles_resumed == 4  # A's tiles, read by B
        assert len(_tile_files(cache)) == 4  # and left to A, which still uses them
        assert not b_progress.warnings and not any("waiting" in m for m in b_progress.infos)
    finally:
        a_progress.go.set()
        thread.join(60)
    assert not isinstance(outcome.get("a"), BaseException), outcome.get("a")
    a_result, a_arrays = outcome["a"]
    _same_as(freq_baseline, a_arrays)
    assert a_result.tiles_resumed == 0 and not a_progress.warnings
    assert not _leftovers(tmp_path) and list(cache.iterdir()) == []  # the last run out emptied it, lock file too


_KILLED_RUN = r"""
import json, os, signal, sys
from rasterio.transform import from_origin
from cloud_probability.core import frequency
from cloud_probability.core.masks import PRESETS
from cloud_probability.core.reading import Grid
from cloud_probability.core.stac import normalise_item

spec = json.loads(sys.argv[1])

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

if spec["kill"] == "writing the outputs":  # in the first tile written out: every output is a part file
    frequency.observation_stdev = die
else:  # the second tile written under its temporary name, not yet renamed into place
    real, renames = os.replace, []
    def replace(src, dst, *args, **kwargs):
        if str(src).endswith(".npz"):
            renames.append(src)
            if len(renames) == 2:
                die()
        return real(src, dst, *args, **kwargs)
    os.replace = replace
grid = Grid("EPSG:32631", from_origin(*spec["origin"], 20.0, 20.0), tuple(spec["shape"]))
scenes = [normalise_item(item) for item in spec["items"]]
frequency.cloud_frequency(scenes, grid, PRESETS["scl"], spec["outputs"], tile_px=spec["tile"], cache_dir=spec["cache"])
print("not killed")
"""


@pytest.mark.fault("cache", "behaves")
@pytest.mark.parametrize("kill, resumed, parts_beside, parts_in_cache", [
    ("writing the outputs", 4, 4, 0),
    ("saving a tile", 1, 0, 1),
])
def test_a_run_killed_while_writing_leaves_nothing_for_good(cog_server, freq_baseline, tmp_path, kill, resumed,
                                                             parts_beside, parts_in_cache):
    """A run killed with SIGKILL (in another process) leaves its partial files (``*.part-PID…``)
    and its finished tiles; the next run removes the partial files of the dead process, resumes
    the tiles, is not held up by the dead run's lock (the OS released it) and writes the
    undisturbed run's outputs. Before, a 0-byte ``*.part-PID.tif`` stayed beside the outputs
    for good."""
    from conftest import BUILD

    out, cache = tmp_path / "out", tmp_path / "cache"
    items = [_cog_item(i, cog_server.url("good", name)) for i, name in enumerate(COG_GOOD)]
    spec = {"kill": kill, "origin": FREQ_ORIGIN, "shape": FREQ_SHAPE, "tile": FREQ_TILE, "items": items,
            "outputs": _freq_outputs(out), "cache": str(cache)}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(BUILD / "plugins"), os.environ.get("PYTHONPATH", "")]))
    child = subprocess.Popen([sys.executable, "-c", _KILLED_RUN, json.dumps(spec)], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL, (child.returncode, stdout, stderr[-2000:])
    beside = [p.name for p in _leftovers(out)]
    assert len(beside) == parts_beside and all(f".part-{child.pid}" in n for n in beside), beside
    assert not any((out / f"{k}.tif").exists() for k in FREQ_OUTPUTS)  # nothing half-written under a final name
    in_cache = _leftovers(cache)
    assert len(in_cache) == parts_in_cache and all(f".part-{child.pid}-" in p.name for p in in_cache), in_cache
    assert len(_tile_files(cache)) == resumed

    progress = Recorder()
    result, arrays = _freq([_cog_scene(i, item["assets"]["scl"]["href"]) for i, item in enumerate(items)], out, cache,
                           progress)
    _same_as(freq_baseline, arrays)
    assert result.tiles_resumed == resumed
    assert not _leftovers(tmp_path) and list(cache.iterdir()) == []
    assert not any("waiting" in m for m in progress.infos)  # the dead run's lock died with it
    removed = [m for m in progress.infos if m.startswith("Removed ")]
    assert removed == ([f"Removed 1 partial tile(s) left in {in_cache[0].parent} by a run that ended while writing "
                        "them."] if parts_in_cache else [])


@pytest.mark.fault("cache", "behaves")
def test_an_old_cache_folder_is_not_pruned_while_a_run_holds_it(tmp_path):
    """Folders untouched for CACHE_DAYS are pruned when a run starts, unless a run holds them
    (a long run, or one paused in a QGIS session)."""
    from cloud_probability.core import cache as tilecache

    root = tmp_path / "cache"
    held = tilecache.TileCache(root, "a" * 24)
    (held.folder / "tile_0_0_0123.npz").write_bytes(b"finished")
    old = time.time() - (tilecache.CACHE_DAYS + 1) * 86400
    os.utime(held.folder, (old, old))
    tilecache.TileCache(root, "b" * 24).release()  # its start prunes what nobody holds
    assert (held.folder / "tile_0_0_0123.npz").exists()
    held.release()
    tilecache.TileCache(root, "b" * 24).release()
    assert not held.folder.exists() and (root / ("b" * 24)).is_dir()


@pytest.mark.fault("cache", "behaves")
def test_partial_files_of_dead_runs_beside_any_output_are_removed(tmp_path):
    """What a killed writer leaves beside a raster (``.part-PID…``, the smoothing's ``.kv-PID…``,
    the composite's ``.cog-PID…``) goes at the next write of that output; a live process's part
    files (this one's), other outputs' and GDAL's own side files stay."""
    from rasterio.transform import from_origin

    from cloud_probability.core.reading import Grid, write_raster

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # ended and reaped: its PID is no process's (until the system reuses it)
    me = os.getpid()
    names = {
        f"mask.tif.part-{dead.pid}.tif": False, f"mask.tif.part-{dead.pid}-1401.tif": False,
        f"mask.tif.kv-{dead.pid}.tif": False, f"mask.tif.cog-{dead.pid}.tif": False,
        f"mask.tif.part-{dead.pid}.tif.aux.xml": False,
        f"mask.tif.part-{me}.tif": True, f"other.tif.part-{dead.pid}.tif": True, "mask.tif.aux.xml": True,
    }
    for name in names:
        (tmp_path / name).write_bytes(b"")
    data = np.arange(64 * 48, dtype=np.uint8).reshape(48, 64)
    write_raster(str(tmp_path / "mask.tif"), data, Grid("EPSG:32631", from_origin(300000, 5700000, 20, 20), (48, 64)),
                 nodata=255)
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {n for n, kept in names.items() if kept} | {"mask.tif"}
    import rasterio

    with rasterio.open(tmp_path / "mask.tif") as ds:
        assert np.array_equal(ds.read(1), data)


# --- Inputs: an area no scene covers -------------------------------------------------------


def _cogs_footprint() -> dict:
    """The four COGs' footprint in longitude/latitude (GeoJSON), as a catalogue states it."""
    from rasterio.warp import transform_geom

    x0, y1 = COG_ORIGIN
    x1, y0 = x0 + 1024 * 20.0, y1 - 1024 * 20.0
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    return transform_geom("EPSG:32631", "EPSG:4326", {"type": "Polygon", "coordinates": [ring]})


FAR_ORIGIN = (402000.0, 5698000.0)  # 100 km east of the COGs


@pytest.mark.fault("inputs", "error")
def test_an_area_outside_every_scene_is_refused_before_any_read(cog_server, freq_baseline, tmp_path):
    """Was: an all-no-data raster, exit 0. The scenes' footprints are right: over the COGs
    they give the baseline; 100 km away the run is refused before a request or a file."""
    from rasterio.warp import transform_bounds

    from cloud_probability.core.frequency import FrequencyError

    footprint = _cogs_footprint()
    scenes = [_cog_scene(i, cog_server.url("good", n), geometry=footprint) for i, n in enumerate(COG_GOOD)]
    _, arrays = _freq(scenes, tmp_path / "inside", tmp_path / "cache")
    _same_as(freq_baseline, arrays)
    before = _requests(cog_server)
    with pytest.raises(FrequencyError) as caught:
        _freq(scenes, tmp_path / "outside", tmp_path / "cache", grid=_freq_grid(FAR_ORIGIN))
    found = re.fullmatch(
        r"The area \(([-\d.]+), ([-\d.]+), ([-\d.]+), ([-\d.]+) in longitude/latitude\) lies outside the footprint "
        r"of every one of the 4 scenes: no scene covers it, so every pixel would be no data\. Check the area's "
        r"coordinates and CRS, or search scenes for this area\.", str(caught.value))
    assert found, str(caught.value)
    x0, y1 = FAR_ORIGIN
    expected = transform_bounds("EPSG:32631", "EPSG:4326", x0, y1 - 16000, x0 + 16000, y1, densify_pts=21)
    assert np.allclose([float(v) for v in found.groups()], expected, atol=2e-4)
    assert _requests(cog_server) == before
    assert list((tmp_path / "outside").iterdir()) == [] and list((tmp_path / "cache").iterdir()) == []


@pytest.mark.fault("inputs", "error")
def test_screening_an_area_outside_every_scene_is_an_error(cog_server, cog_baseline):
    """Was: exit 0 and a row of 'no data in the area' per acquisition (issue 23). Over the COGs the same
    scenes give the baseline; 100 km away the screening is refused before a request, with the area named."""
    from shapely.geometry import box

    from cloud_probability.core.masks import PRESETS
    from cloud_probability.core.screening import ScreeningError, screen_scenes

    footprint = _cogs_footprint()
    scenes = [_cog_scene(i, cog_server.url("good", n), geometry=footprint) for i, n in enumerate(COG_GOOD)]
    assert _cog_screen(scenes) == cog_baseline
    before = _requests(cog_server)
    x0, y1 = FAR_ORIGIN
    with pytest.raises(ScreeningError) as caught:
        screen_scenes(scenes, box(x0, y1 - 16000, x0 + 16000, y1), 32631, PRESETS["scl"])
    assert re.fullmatch(
        r"The area \([-\d.]+, [-\d.]+, [-\d.]+, [-\d.]+ in longitude/latitude\) lies outside the footprint of every "
        r"one of the 4 scenes: none covers it, so every acquisition would be 'no data in the area'\. Check the "
        r"area's coordinates and CRS, or search scenes for this area\.", str(caught.value)), str(caught.value)
    assert _requests(cog_server) == before


@pytest.mark.fault("inputs", "error")
def test_scenes_without_footprints_and_no_data_in_the_area_is_an_error(cog_server, tmp_path):
    """Scenes whose items carry no footprint are read; if none has a valid observation in the
    area the run stops rather than write rasters of no data."""
    from cloud_probability.core.frequency import FrequencyError

    with pytest.raises(FrequencyError) as caught:
        _freq(_good_scenes(cog_server), tmp_path / "out", tmp_path / "cache", grid=_freq_grid(FAR_ORIGIN))
    assert str(caught.value) == (
        "None of the 4 acquisitions has a valid observation in the area (800 × 800 pixels): every pixel would be "
        "no data. Check the area, its CRS, the period and the scenes.")
    assert list((tmp_path / "out").iterdir()) == [] and not _leftovers(tmp_path)


@pytest.mark.fault("inputs", "error")
def test_a_composite_without_a_clear_observation_is_an_error(cog_server, tmp_path):
    from cloud_probability.core.composite import CompositeError, clear_composite
    from cloud_probability.core.masks import PRESETS

    out = tmp_path / "composite.tif"
    with pytest.raises(CompositeError) as caught:
        clear_composite(_good_scenes(cog_server), _freq_grid(FAR_ORIGIN), PRESETS["scl"], str(out), bands=("scl",))
    assert str(caught.value) == (
        "None of the 4 acquisitions has a clear observation in the area (800 × 800 pixels): the composite would be "
        "no data everywhere. Check the area, its CRS, the period and the scenes.")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.fault("inputs", "error")
def test_cloudfrequency_area_outside_every_scene(provider, scenes_gpkg, tmp_path):
    """The fault server's 30 real items lie in Libya; an area in London is outside all of them."""
    from qgis import processing
    from qgis.core import QgsProcessingException

    outputs = _frequency_outputs(tmp_path)
    with pytest.raises(QgsProcessingException, match=r"lies outside the footprint of every one of the 30 scenes"):
        processing.run("cloudprob:cloudfrequency", {
            "SCENES": str(scenes_gpkg), "AOI": "530000,540000,175000,185000 [EPSG:27700]", "TARGET_CRS": "EPSG:27700",
            "RESOLUTION": 20, **outputs})
    assert list(tmp_path.iterdir()) == []


# --- Inputs: rasters and zones -------------------------------------------------------------
# Grids compared exactly (size, transform, CRS), never with np.allclose (its relative tolerance
# is ~57 m at UTM northings, and it never saw the CRS); zones must be polygons; an invalid one
# is repaired keeping every lobe, with its area before and after; zones nowhere on the raster
# are an error.

ZONE_ORIGIN = (500000.0, 200000.0)


def _raster(path: Path, data: np.ndarray, origin=ZONE_ORIGIN, crs="EPSG:27700", nodata=-9999.0) -> str:
    import rasterio
    from rasterio.transform import from_origin

    with rasterio.open(path, "w", driver="GTiff", width=data.shape[1], height=data.shape[0], count=1,
                       dtype=data.dtype.name, crs=crs, transform=from_origin(*origin, 20.0, 20.0),
                       nodata=nodata) as ds:
        ds.write(data, 1)
    return str(path)


def _zone_rasters(tmp_path: Path) -> tuple[str, np.ndarray]:
    rng = np.random.default_rng(14)
    probability = rng.uniform(0, 100, (30, 40)).astype(np.float32)
    return _raster(tmp_path / "probability.tif", probability), probability


OFF_GRID = [
    pytest.param({"origin": (ZONE_ORIGIN[0] + 40.0, ZONE_ORIGIN[1])}, id="shifted-2-pixels"),
    pytest.param({"origin": (ZONE_ORIGIN[0] + 0.01, ZONE_ORIGIN[1])}, id="shifted-1-cm"),
    pytest.param({"crs": "EPSG:32630"}, id="same-numbers-another-crs"),
]


@pytest.mark.fault("inputs", "error")
@pytest.mark.parametrize("off", OFF_GRID)
def test_zonal_counts_off_the_probability_grid_are_refused(tmp_path, off):
    """Was: np.allclose, no CRS: a VALID raster shifted by 2 pixels changed 285 of 300 areas."""
    import geopandas as gpd
    from shapely.geometry import box

    from cloud_probability.core.zonal import ZonalError, zonal_statistics

    raster, _ = _zone_rasters(tmp_path)
    valid = _raster(tmp_path / "valid.tif", np.full((30, 40), 12, np.uint16), nodata=0, **off)
    zones = gpd.GeoDataFrame({"code": ["a"]}, geometry=[box(500100, 199500, 500400, 199800)], crs="EPSG:27700")
    with pytest.raises(ZonalError) as caught:
        zonal_statistics(raster, zones, "code", valid_path=valid)
    assert str(caught.value) == "The acquisition-count raster is not on the probability raster's grid (size, transform and CRS)."
    assert len(zonal_statistics(raster, zones, "code").table) == 1  # the probability alone is fine


@pytest.mark.fault("inputs", "error")
@pytest.mark.parametrize("off", OFF_GRID)
def test_smoothing_inputs_off_the_counts_grid_are_refused(tmp_path, off):
    from cloud_probability.core.smoothing import reference_adjustment, smooth_probability

    cloudy = _raster(tmp_path / "cloudy.tif", np.full((60, 60), 3, np.uint16), nodata=None)
    valid = _raster(tmp_path / "valid.tif", np.full((60, 60), 10, np.uint16), nodata=0)
    other = _raster(tmp_path / "other.tif", np.full((60, 60), 10, np.uint16), nodata=0, **off)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ValueError) as caught:
        reference_adjustment(cloudy, other, str(out / "lag.tif"), str(out / "adjusted.tif"))
    assert str(caught.value) == "The cloudy and valid count rasters are not on the same grid (size, transform and CRS)."
    with pytest.raises(ValueError) as caught:
        smooth_probability(cloudy, valid, str(out / "smoothed.tif"), str(out / "adjusted.tif"), covariates=[other])
    assert str(caught.value) == "The covariate other.tif is not on the counts' grid (size, transform and CRS)."
    assert list(out.iterdir()) == []


@pytest.mark.fault("inputs", "error")
@pytest.mark.parametrize("geometry, kind", [
    pytest.param("POINT (500300 199700)", "Point", id="points"),
    pytest.param("LINESTRING (500000 199500, 500800 199500)", "LineString", id="lines"),
    pytest.param("MULTIPOINT ((500300 199700), (500500 199700))", "MultiPoint", id="multipoints"),
])
def test_zones_that_are_not_polygons_are_refused(tmp_path, geometry, kind):
    """Was: points gave every area NULL, exit 0; lines gave length-weighted numbers."""
    import geopandas as gpd
    from shapely import wkt
    from shapely.geometry import box

    from cloud_probability.core.zonal import ZonalError, zonal_statistics

    raster, _ = _zone_rasters(tmp_path)
    zones = gpd.GeoDataFrame({"code": ["poly", "other"]}, geometry=[box(500100, 199500, 500400, 199800),
                                                                     wkt.loads(geometry)], crs="EPSG:27700")
    with pytest.raises(ZonalError) as caught:
        zonal_statistics(raster, zones, "code")
    assert str(caught.value) == (
        f"The small areas must be polygons; this layer has {', '.join(sorted({'Polygon', kind}))} geometries. "
        "Statistics of a probability per point or line would be a value per cell touched, not per area.")


@pytest.mark.fault("inputs", "behaves")
def test_a_self_intersecting_zone_keeps_both_lobes_and_says_so(tmp_path):
    """Was: buffer(0) kept one lobe (half the pixels) and reported 100 % coverage. The expected
    figures come from shapely's cell-by-cell intersection areas, not from exactextract."""
    import geopandas as gpd
    from shapely.geometry import Polygon, box

    from cloud_probability.core.zonal import zonal_statistics

    raster, probability = _zone_rasters(tmp_path)
    x0, y0 = 500105.0, 199400.0
    bowtie = Polygon([(x0, y0), (x0 + 230, y0 + 170), (x0 + 230, y0), (x0, y0 + 170)])  # two triangles
    square = box(500300, 199500, 500500, 199700)
    zones = gpd.GeoDataFrame({"code": ["bowtie", "square"]}, geometry=[bowtie, square], crs="EPSG:27700")
    result = zonal_statistics(raster, zones, "code")
    lobes = 2 * (230 / 2) * 170 / 2  # two triangles of base 170 and height 115
    assert result.invalid == [f"bowtie (area 0 → {lobes:.6g} after repair)"]
    table = result.table.set_index("code")

    def expected(shape):
        from shapely.validation import make_valid

        shape = make_valid(shape)
        weights = np.zeros_like(probability, dtype=np.float64)
        for r in range(probability.shape[0]):
            for c in range(probability.shape[1]):
                cell = box(ZONE_ORIGIN[0] + 20 * c, ZONE_ORIGIN[1] - 20 * (r + 1),
                           ZONE_ORIGIN[0] + 20 * (c + 1), ZONE_ORIGIN[1] - 20 * r)
                weights[r, c] = cell.intersection(shape).area / 400.0
        return (weights * probability).sum() / weights.sum(), weights.sum()

    for code, shape in (("bowtie", bowtie), ("square", square)):
        mean, cells = expected(shape)
        assert table.loc[code, "probability_mean"] == pytest.approx(mean, rel=1e-5), code
        assert table.loc[code, "covered_cells"] == pytest.approx(cells, rel=1e-6), code
        assert table.loc[code, "coverage_pct"] == pytest.approx(100.0), code
    assert table.loc["bowtie", "covered_cells"] == pytest.approx(lobes / 400.0)  # both lobes: not half of them


@pytest.mark.fault("inputs", "error")
def test_zones_nowhere_on_the_raster_are_an_error(tmp_path):
    """Zones in the right CRS but elsewhere (or declared in a wrong CRS): every area would be
    NULL, exit 0. An error naming both extents instead; zones partly on it stay fine."""
    import geopandas as gpd
    from shapely.geometry import box

    from cloud_probability.core.zonal import ZonalError, zonal_statistics

    raster, _ = _zone_rasters(tmp_path)
    far = gpd.GeoDataFrame({"code": ["a", "b"]}, geometry=[box(0, 0, 100, 100), box(200, 0, 300, 100)],
                           crs="EPSG:27700")
    with pytest.raises(ZonalError) as caught:
        zonal_statistics(raster, far, "code")
    assert str(caught.value) == (
        "None of the 2 areas meets the probability raster: the areas span (0, 0, 300, 100) and the raster "
        "(500000, 199400, 500800, 200000), in EPSG:27700. Check the areas' CRS and the raster.")
    one_on = gpd.GeoDataFrame({"code": ["a", "on"]}, geometry=[box(0, 0, 100, 100), box(500100, 199500, 500200, 199600)],
                              crs="EPSG:27700")
    table = zonal_statistics(raster, one_on, "code").table.set_index("code")
    assert np.isnan(table.loc["a", "probability_mean"]) and not np.isnan(table.loc["on", "probability_mean"])


@pytest.mark.fault("inputs", "error")
def test_zonalstatistics_with_counts_off_the_grid_writes_nothing(provider, tmp_path):
    import geopandas as gpd
    from qgis import processing
    from qgis.core import QgsProcessingException
    from shapely.geometry import box

    raster, _ = _zone_rasters(tmp_path)
    valid = _raster(tmp_path / "valid.tif", np.full((30, 40), 12, np.uint16), nodata=0,
                    origin=(ZONE_ORIGIN[0] + 40.0, ZONE_ORIGIN[1]))
    zones = tmp_path / "zones.gpkg"
    gpd.GeoDataFrame({"code": ["a"]}, geometry=[box(500100, 199500, 500400, 199800)], crs="EPSG:27700").to_file(zones)
    out, csv = tmp_path / "areas.gpkg", tmp_path / "areas.csv"
    with pytest.raises(QgsProcessingException, match=r"The acquisition-count raster is not on the probability "
                                                     r"raster's grid \(size, transform and CRS\)\."):
        processing.run("cloudprob:zonalstatistics", {
            "INPUT_RASTER": raster, "VALID": valid, "ZONES": str(zones), "ZONE_ID_FIELD": "code",
            "OUTPUT": str(out), "OUTPUT_CSV": str(csv)})
    assert not out.exists() and not csv.exists() and not _leftovers(tmp_path)


# --- Inputs: checked before any work (issue 23) --------------------------------------------
# What a new user hits through qgis_process, the dialogs and the model: every input and every
# output location is checked before the first step, with one sentence; the shipped model no
# longer finds its zones wrong or its output folder missing after the search, the frequency and
# the smoothing have run. The fault server counts requests: "before any work" is "no request".

UTM_AOI = "350000,362000,3286000,3298000 [EPSG:32634]"  # 12 km, in the UTM zone of the fault server's scenes


def _zones_gpkg(path: Path, geometries, ids, crs="EPSG:32634", field="code", **columns) -> str:
    """A GeoPackage of zones (``geometries``, shapely) with their ids and other columns."""
    import geopandas as gpd

    gpd.GeoDataFrame({field: ids, **columns}, geometry=list(geometries), crs=crs).to_file(path, driver="GPKG")
    return str(path)


def _empty_polygons_gpkg(path: Path) -> str:
    """A polygon layer with an id field and no feature (what a filter that kept nothing leaves)."""
    from osgeo import ogr, osr

    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32634)
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(path))
    layer = ds.CreateLayer("zones", srs, ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("code", ogr.OFTString))
    ds = None
    return str(path)


def _squares(n: int, size: float = 200.0, origin=(351000.0, 3287000.0)):
    from shapely.geometry import box

    x0, y0 = origin
    return [box(x0 + (i % 20) * size, y0 + (i // 20) * size, x0 + (i % 20 + 1) * size, y0 + (i // 20 + 1) * size)
            for i in range(n)]


def _model_params(faults, out: Path, zones: str, **extra) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    return {"STAC_URL": faults.url("ok"), "COLLECTION": "sentinel-2-l2a", "AOI": UTM_AOI,
            "START_DATE": DAY.isoformat(), "END_DATE": DAY.isoformat(), "ZONES": zones, "ZONE_ID_FIELD": "code",
            "TARGET_CRS": "EPSG:32634", "RESOLUTION": 20, "zonal:SMALL_AREAS": str(out / "areas.gpkg"), **extra}


def _duplicate_ids(tmp_path: Path) -> str:
    """300 areas with 4 distinct ids (a district code picked instead of the area's own), and a
    unique name column."""
    return _zones_gpkg(tmp_path / "dup.gpkg", _squares(300), [["A", "B", "C", "D"][i % 4] for i in range(300)],
                       name=[f"area {i}" for i in range(300)])


MODEL_REFUSALS = [
    pytest.param(lambda t: _empty_polygons_gpkg(t / "empty.gpkg"), {}, r"^The small-area layer has no features\.$",
                 id="empty-zones"),
    pytest.param(lambda t: _zones_gpkg(t / "points.gpkg", [g.centroid for g in _squares(3)], ["a", "b", "c"]), {},
                 r"^The small areas must be polygons; this layer has Point geometries\.", id="point-zones"),
    pytest.param(_duplicate_ids, {},
                 r"^The area id field 'code' does not identify the areas: 300 areas have only 4 distinct ids \(4 "
                 r"repeated: 'A' 75 times, 'B' 75 times, 'C' 75 times …\)\. The table is joined back to the areas by "
                 r"this field, so each area needs an id of its own\. Fields of this layer with one value per area: "
                 r"fid, name\.", id="duplicate-ids"),
    pytest.param(lambda t: _zones_gpkg(t / "london.gpkg", _squares(2, origin=(533000.0, 172000.0)), ["a", "b"],
                                       crs="EPSG:27700"), {},
                 r"^None of the 2 small areas lies in the area of interest", id="zones-elsewhere"),
    pytest.param(lambda t: _zones_gpkg(t / "ok.gpkg", _squares(3), ["a", "b", "c"]),
                 {"zonal:SMALL_AREAS": "{tmp}/no such folder/areas.gpkg"},
                 r"^The folder {tmp}/no such folder for the output 'Small areas with cloud probability' does not "
                 r"exist \(the nearest folder that exists is {tmp}\): create it, or choose another place for the "
                 r"output\. Nothing was run\.$", id="missing-output-folder"),
    pytest.param(lambda t: _zones_gpkg(t / "ok.gpkg", _squares(3), ["a", "b", "c"]),
                 {"START_DATE": "2024-05-18", "END_DATE": "2024-05-17"},
                 r"^The end date 2024-05-17 is before the start date 2024-05-18\.$", id="end-before-start"),
]


@pytest.mark.fault("inputs", "error")
@pytest.mark.parametrize("zones, extra, message", MODEL_REFUSALS)
def test_the_model_checks_every_input_before_its_first_step(provider, faults, tmp_path, zones, extra, message):
    """Was: empty or point zones and a missing output folder failed at the zonal step, after the
    search, the frequency and the smoothing (a raw fiona traceback for the folder), rasters left
    behind. Now refused before the search: not one request, not one file."""
    from qgis import processing
    from qgis.core import QgsProcessingException

    tmp = str(tmp_path)
    extra = {k: v.format(tmp=tmp) for k, v in extra.items()}
    params = _model_params(faults, tmp_path / "out", zones(tmp_path), **extra)
    before = faults.hits["ok"]
    start = time.monotonic()
    with pytest.raises(QgsProcessingException) as caught:
        processing.run("cloudprob:annualcloudprobability", params)
    assert time.monotonic() - start < BOUND_S
    shown = str(caught.value).splitlines()[-1]  # processing.run's own first line, then ours
    assert re.search(message.replace("{tmp}", re.escape(tmp)), shown), shown
    assert faults.hits["ok"] == before, "the model searched before refusing"
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.fault("inputs", "behaves")
def test_the_model_accepts_what_its_steps_accept(provider, faults, tmp_path):
    """The checks above refuse only what a step would: good zones and outputs pass QGIS's own check
    and ours (the model itself is run on the sample archive in test_smoothing_zonal)."""
    from qgis.core import QgsApplication, QgsProcessingContext

    model = QgsApplication.processingRegistry().createAlgorithmById("cloudprob:annualcloudprobability")
    params = _model_params(faults, tmp_path / "out", _zones_gpkg(tmp_path / "ok.gpkg", _squares(300),
                                                                   [f"E{i:05d}" for i in range(300)]))
    assert model.checkParameterValues(params, QgsProcessingContext()) == (True, "")


@pytest.mark.fault("inputs", "error")
def test_the_model_in_qgis_process_says_a_missing_folder_in_a_sentence(provider, faults, tmp_path):
    """Through qgis_process, as a user types it: no traceback, exit 1 within seconds."""
    from conftest import ROOT

    zones = _zones_gpkg(tmp_path / "ok.gpkg", _squares(3), ["a", "b", "c"])
    missing = tmp_path / "results" / "2024"
    args = [f"{k}={v}" for k, v in _model_params(faults, tmp_path / "out", zones).items() if k != "zonal:SMALL_AREAS"]
    done = subprocess.run([str(ROOT / "scripts" / "qgis_process"), "run", "cloudprob:annualcloudprobability", "--",
                           *args, f"zonal:SMALL_AREAS={missing / 'areas.gpkg'}"],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ, QT_QPA_PLATFORM="offscreen"))
    assert done.returncode == 1, done.stdout[-2000:]
    assert (f"The folder {missing} for the output 'Small areas with cloud probability' does not exist (the nearest "
            f"folder that exists is {tmp_path}): create it, or choose another place for the output.") in done.stderr
    assert "Traceback" not in done.stderr + done.stdout and not missing.parent.exists()


def _algorithm_params(alg_id: str, tmp_path: Path, faults, scenes: str, missing: Path) -> dict:
    """The fewest parameters each algorithm runs with, one output in the folder ``missing``."""
    raster = _raster(tmp_path / "probability.tif", np.full((30, 40), 40.0, np.float32))
    counts = _raster(tmp_path / "valid.tif", np.full((30, 40), 12, np.uint16), nodata=0)
    from shapely.geometry import box

    zones = _zones_gpkg(tmp_path / "zones.gpkg", [box(500100, 199500, 500400, 199800)], ["a"], crs="EPSG:27700")
    west, south, east, north = BBOX
    aoi = f"{west},{east},{south},{north} [EPSG:4326]"
    return {
        "cloudprob:searchscenes": {"STAC_URL": faults.url("ok"), "COLLECTION": "sentinel-2-l2a", "AOI": aoi,
                                   "START_DATE": DAY.isoformat(), "END_DATE": DAY.isoformat(),
                                   "OUTPUT": str(missing / "scenes.gpkg")},
        "cloudprob:screenscenes": {"SCENES": scenes, "AOI": aoi, "OUTPUT": str(missing / "screened.gpkg")},
        "cloudprob:cloudmask": {"SCENES": scenes, "OUTPUT": str(missing / "mask.tif")},
        "cloudprob:cloudfrequency": {"SCENES": scenes, "AOI": UTM_AOI, "OUTPUT_PROBABILITY": str(missing / "p.tif")},
        "cloudprob:clearcomposite": {"SCENES": scenes, "AOI": UTM_AOI, "OUTPUT": str(missing / "rgb.tif")},
        "cloudprob:smoothprobability": {"CLOUDY": counts, "VALID": counts, "OUTPUT_ADJUSTED": str(missing / "a.tif")},
        "cloudprob:zonalstatistics": {"INPUT_RASTER": raster, "ZONES": zones, "ZONE_ID_FIELD": "code",
                                      "OUTPUT": str(missing / "areas.gpkg")},
    }[alg_id]


@pytest.mark.fault("inputs", "error")
@pytest.mark.parametrize("alg_id", ["cloudprob:searchscenes", "cloudprob:screenscenes", "cloudprob:cloudmask",
                                    "cloudprob:cloudfrequency", "cloudprob:clearcomposite",
                                    "cloudprob:smoothprobability", "cloudprob:zonalstatistics"])
def test_every_algorithm_checks_its_output_folder_first(provider, faults, scenes_gpkg, tmp_path, alg_id):
    from qgis import processing
    from qgis.core import QgsApplication, QgsProcessingException

    missing = tmp_path / "no" / "such" / "folder"
    params = _algorithm_params(alg_id, tmp_path, faults, str(scenes_gpkg), missing)
    label = next(d.description() for d in QgsApplication.processingRegistry().algorithmById(alg_id)
                 .destinationParameterDefinitions() if params.get(d.name(), "").startswith(str(missing)))
    before = sum(faults.hits.values())
    with pytest.raises(QgsProcessingException) as caught:
        processing.run(alg_id, params)
    assert str(caught.value).splitlines()[-1] == (
        f"The folder {missing} for the output '{label}' does not exist (the nearest folder that exists is "
        f"{tmp_path}): create it, or choose another place for the output. Nothing was run.")
    assert sum(faults.hits.values()) == before and not (tmp_path / "no").exists()


# --- Inputs: small areas whose ids repeat (issue 23) ---------------------------------------
# Refused rather than worked around: the table is joined back to the areas by the id field, so
# a repeated id would give rows that belong to several areas; a key of our own would join to
# nothing the user has, and merging the areas of one id would change what a row describes.


@pytest.mark.fault("inputs", "error")
def test_zonal_statistics_refuse_repeated_ids_naming_them(tmp_path):
    """Was: 300 areas with 4 distinct ids made a table of 300 rows that could not be joined back."""
    import geopandas as gpd

    from cloud_probability.core.zonal import ZonalError, zonal_statistics

    raster, _ = _zone_rasters(tmp_path)
    ids = ["a", "b", "a", "c", "a", "b", "d"]
    zones = gpd.GeoDataFrame({"code": ids, "n": list(range(7))}, geometry=_squares(7, 20.0, (500000.0, 199500.0)),
                             crs="EPSG:27700")
    with pytest.raises(ZonalError) as caught:
        zonal_statistics(raster, zones, "code")
    assert str(caught.value) == (
        "The area id field 'code' does not identify the areas: 7 areas have only 4 distinct ids (2 repeated: 'a' 3 "
        "times, 'b' 2 times). The table is joined back to the areas by this field, so each area needs an id of its "
        "own. Fields of this layer with one value per area: n. If several features make one area, dissolve them by "
        "the id first (Vector geometry > Dissolve).")
    zones["code"] = [f"z{i}" if i < 6 else None for i in range(7)]
    with pytest.raises(ZonalError, match=r"does not identify the areas: 1 area has no id \(NULL\)\."):
        zonal_statistics(raster, zones, "code")
    assert len(zonal_statistics(raster, zones, "n").table) == 7  # a unique field is fine


@pytest.mark.fault("inputs", "error")
def test_zonalstatistics_refuses_repeated_ids_before_any_work(provider, tmp_path):
    from qgis import processing
    from qgis.core import QgsProcessingException

    raster, _ = _zone_rasters(tmp_path)
    zones = _zones_gpkg(tmp_path / "zones.gpkg", _squares(300, 2.0, (500000.0, 199500.0)),
                        [["E0701", "E0702", "E0703", "E0704"][i % 4] for i in range(300)], crs="EPSG:27700",
                        field="district", code=[f"E{i:08d}" for i in range(300)])
    out = tmp_path / "areas.gpkg"
    with pytest.raises(QgsProcessingException) as caught:
        processing.run("cloudprob:zonalstatistics", {"INPUT_RASTER": raster, "ZONES": zones,
                                                     "ZONE_ID_FIELD": "district", "OUTPUT": str(out)})
    assert str(caught.value).splitlines()[-1].startswith(
        "The area id field 'district' does not identify the areas: 300 areas have only 4 distinct ids (4 repeated: "
        "'E0701' 75 times, 'E0702' 75 times, 'E0703' 75 times …). The table is joined back to the areas by this "
        "field, so each area needs an id of its own. Fields of this layer with one value per area: fid, code.")
    assert not out.exists()
    processing.run("cloudprob:zonalstatistics", {"INPUT_RASTER": raster, "ZONES": zones, "ZONE_ID_FIELD": "code",
                                                 "OUTPUT": str(out)})
    assert out.exists()


# --- Inputs: extents that are not what was meant (issue 23) --------------------------------


@pytest.mark.fault("inputs", "error")
def test_degrees_labelled_with_a_projected_crs_are_refused_with_the_fix(provider, faults, tmp_path):
    """Was: a box of 0.3 × 0.2 m near the British National Grid's origin, and "No scenes found".
    The km are the geodesic sizes of the box on WGS 84 (20.83 × 22.25 km and 22.26 × 33.40 km
    by pyproj.Geod), to three figures."""
    from qgis.core import QgsProcessingException

    before = faults.hits["ok"]
    with pytest.raises(QgsProcessingException) as caught:
        _run_search(faults, tmp_path, AOI="-0.2,0.1,51.4,51.6 [EPSG:27700]")
    assert str(caught.value).splitlines()[-1] == (
        "The extent '-0.2,0.1,51.4,51.6 [EPSG:27700]' is 0.3 × 0.2 m in EPSG:27700, smaller than one Sentinel-2 "
        "pixel, and its numbers look like degrees of longitude and latitude. Did you mean "
        "'-0.2,0.1,51.4,51.6 [EPSG:4326]' (longitude -0.2…0.1, latitude 51.4…51.6, about 20.8 × 22.3 km) or "
        "'51.4,51.6,-0.2,0.1 [EPSG:4326]' (longitude 51.4…51.6, latitude -0.2…0.1, about 22.3 × 33.4 km)?")
    assert faults.hits["ok"] == before and not (tmp_path / "scenes.gpkg").exists()


@pytest.fixture(scope="module")
def sample_scenes(sample_servers, tmp_path_factory):
    """The sample archive's scenes over its 12 km around Greenwich, from cloudprob:searchscenes."""
    from qgis import processing

    from conftest import ensure_provider

    ensure_provider()
    out = tmp_path_factory.mktemp("sample-scenes") / "scenes.gpkg"
    processing.run("cloudprob:searchscenes", {
        "STAC_URL": sample_servers.stac.url, "AOI": "533000,545000,172000,184000 [EPSG:27700]",
        "START_DATE": "2024-01-01", "END_DATE": "2024-12-31", "OUTPUT": str(out)})
    return out


@pytest.mark.fault("inputs", "error")
def test_latitude_and_longitude_swapped_are_named_when_no_scene_is_found(provider, sample_servers, tmp_path):
    """Was: "No scenes found", no hint. The STAC API (rustac) honours the area: over the Indian
    Ocean there is nothing; the reading offered finds Greenwich's scenes."""
    from qgis import processing
    from qgis.core import QgsProcessingException, QgsVectorLayer

    params = {"STAC_URL": sample_servers.stac.url, "START_DATE": "2024-01-01", "END_DATE": "2024-12-31",
              "OUTPUT": str(tmp_path / "scenes.gpkg")}
    with pytest.raises(QgsProcessingException) as caught:
        processing.run("cloudprob:searchscenes", {**params, "AOI": "51.45,51.5,-0.05,0.05 [EPSG:4326]"})
    message = str(caught.value)
    assert message.startswith("No scenes of 'sentinel-2-c1-l2a' found at") and message.endswith(
        "If latitude and longitude are swapped, the area you meant is '-0.05,0.05,51.45,51.5 [EPSG:4326]' "
        "(longitude -0.05…0.05, latitude 51.45…51.5).")
    processing.run("cloudprob:searchscenes", {**params, "AOI": "-0.05,0.05,51.45,51.5 [EPSG:4326]"})
    assert QgsVectorLayer(str(tmp_path / "scenes.gpkg")).featureCount() > 0


# --- Inputs: what a run costs, said before it starts (issue 23) ----------------------------


class _Log:
    """A Processing feedback that keeps its lines and cancels when one contains ``cancel_on``."""

    def __new__(cls, cancel_on=None):
        from qgis.core import QgsProcessingFeedback

        class Log(QgsProcessingFeedback):
            def __init__(self):
                super().__init__()
                self.lines = []

            def _keep(self, text):
                self.lines.append(text)
                if cancel_on and cancel_on in text:
                    self.cancel()

            def pushInfo(self, info):  # noqa: N802
                self._keep(info)
                super().pushInfo(info)

            def pushWarning(self, warning):  # noqa: N802
                self._keep(warning)
                super().pushWarning(warning)

            def pushDebugInfo(self, info):  # noqa: N802
                self._keep(info)
                super().pushDebugInfo(info)

        return Log()


@pytest.mark.fault("inputs", "behaves")
def test_a_grid_far_finer_than_the_sources_says_its_cost_first(provider, sample_scenes, tmp_path):
    """Was: 1 or 2 m from the 20 m SCL started without a word. The run's first line now says the
    pixels (12 km at 2 m: 6000 × 6000), how much finer than the sources, the time at a measured
    rate and the disk; cancelled on that line, it has read nothing and written nothing."""
    from qgis import processing

    log = _Log(cancel_on="This run will make")
    processing.run("cloudprob:cloudfrequency", {
        "SCENES": str(sample_scenes), "AOI": "533000,545000,172000,184000 [EPSG:27700]", "TARGET_CRS": "EPSG:27700",
        "RESOLUTION": 2, "MEASURE": 1, **_frequency_outputs(tmp_path)}, feedback=log)
    said = next(line for line in log.lines if line.startswith("This run will make"))
    assert said.startswith("This run will make 36,000,000 pixels × 1 band(s), about ")
    assert re.search(r"million pixel-acquisitions: about [\d.]+ (s|min|h) of computing at [\d.]+ million per second "
                     r"\(measured by benchmarks/bench_cost\.py, finer grids, on a 2-core machine", said), said
    disk = re.search(r"and ([\d.]+) MB to ([\d.]+) MB of disk", said)
    # at most: at least the four rasters uncompressed (36 M pixels × 14 bytes) with their pyramids (a third more)
    assert disk and 0 < float(disk.group(1)) < float(disk.group(2)) and float(disk.group(2)) >= 36e6 * 14 * 4 / 3 / 1e6
    assert said.endswith("The grid is 10 times finer than the sources' 20 m: 100 pixels for each source pixel, and "
                         "no more detail.")
    assert log.lines.index(said) < min(i for i, line in enumerate(log.lines) if line.startswith("Grid "))
    assert not any("pixel-observations from" in line for line in log.lines)  # no tile was counted
    assert list(tmp_path.iterdir()) == []


def _in_a_small_disk(folder: Path, size: str, script: str, env: dict) -> subprocess.CompletedProcess:
    """``script`` (bash) run with a tmpfs of ``size`` mounted on ``folder``, in a mount namespace of
    its own (the mount ends with it): a real small disk, for root or with user namespaces."""
    import shutil

    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("util-linux's unshare is not installed")
    folder.mkdir(parents=True, exist_ok=True)
    namespace = [unshare, "--mount"] + ([] if os.geteuid() == 0 else ["--map-root-user"])
    probe = subprocess.run(namespace + ["true"], capture_output=True, text=True)
    if probe.returncode:
        pytest.skip(f"no mount namespace here: {probe.stderr.strip()}")
    return subprocess.run(namespace + ["bash", "-c", f"mount -t tmpfs -o size={size} tmpfs '{folder}' && {script}"],
                          capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.fault("inputs", "error")
def test_outputs_that_cannot_fit_on_their_disk_are_refused_before_any_work(provider, sample_scenes, tmp_path):
    """On an 8 MB disk, the sample archive's 12 km at 2 m (36 M pixels; at least 16 MB at the
    compression measured) is refused before a scene is read, nothing written; at 20 m (360,000
    pixels) it fits, and runs."""
    from conftest import ROOT

    disk = tmp_path / "small-disk"
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", XDG_CACHE_HOME=str(tmp_path / "cache"))
    run = (f"{ROOT / 'scripts' / 'qgis_process'} run cloudprob:cloudfrequency -- SCENES={sample_scenes} "
           f"'AOI=533000,545000,172000,184000 [EPSG:27700]' TARGET_CRS=EPSG:27700 MEASURE=1 "
           + " ".join(f"{k}={disk}/{k.lower()}.tif" for k in ("OUTPUT_PROBABILITY", "OUTPUT_VALID", "OUTPUT_CLOUDY",
                                                              "OUTPUT_STDEV")))
    done = _in_a_small_disk(disk, "8m", f"{run} RESOLUTION=2; echo \"exit $?\"; ls -A '{disk}'; "
                                        f"{run} RESOLUTION=20 > /dev/null 2>&1; echo \"then $?\"; ls '{disk}'", env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(rf"The disk of {re.escape(str(disk))}/\w+\.tif has 8\.39 MB free; this run needs at least "
                     r"[\d.]+ MB there \(at the compression measured on the sample archive; up to [\d.]+ MB "
                     r"uncompressed\)\. Free some space, write elsewhere, or use a coarser resolution or a smaller "
                     r"area\.", done.stderr), done.stderr[-3000:]
    out = done.stdout.splitlines()
    assert out[out.index("exit 1") + 1] == "then 0"  # refused at 2 m, nothing on the disk; written at 20 m
    assert sorted(out[out.index("then 0") + 1:]) == sorted(f"{k}.tif" for k in ("output_cloudy", "output_probability",
                                                                                 "output_stdev", "output_valid"))


@pytest.mark.fault("inputs", "behaves")
def test_the_model_says_its_cost_before_the_search(provider, faults, tmp_path):
    """The model's first lines: the area's warnings, then what the run will cost (12 km at 5 m:
    2400 × 2400 pixels), before the search is asked anything."""
    from qgis import processing

    zones = _zones_gpkg(tmp_path / "ok.gpkg", _squares(3), ["a", "b", "c"])
    log = _Log(cancel_on="This run will make")
    before = faults.hits["ok"]
    processing.run("cloudprob:annualcloudprobability", {
        **_model_params(faults, tmp_path / "out", zones), "RESOLUTION": 5}, feedback=log)
    said = next(line for line in log.lines if line.startswith("This run will make"))
    assert said.startswith("This run will make 5,760,000 pixels × 1 band(s)") and "4 times finer" in said
    assert faults.hits["ok"] == before  # cancelled on that line, before the search


# --- Partial files after SIGTERM and Ctrl-C (issue 23) -------------------------------------


@pytest.mark.fault("cache", "behaves")
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_a_signal_while_writing_leaves_no_partial_file(provider, sample_scenes, tmp_path_factory, signame):
    """Was: SIGTERM ended qgis_process at once and its *.part-PID files stayed beside the outputs
    for good (the next run, naming its outputs differently, never removed them); Ctrl-C did
    nothing. The signal now cancels the run: sent as soon as a partial file appears beside the
    outputs, it ends qgis_process within seconds with a sentence, and leaves no partial file
    and no half-written output. (The same cache for both signals: the second run resumes.)"""
    from conftest import ROOT

    cache = tmp_path_factory.getbasetemp() / "signal-cache"
    out = tmp_path_factory.mktemp(f"signal-{signame}")
    outputs = {k: out / f"{k.lower()}.tif" for k in ("OUTPUT_PROBABILITY", "OUTPUT_VALID", "OUTPUT_CLOUDY",
                                                     "OUTPUT_STDEV")}
    child = subprocess.Popen(
        [str(ROOT / "scripts" / "qgis_process"), "run", "cloudprob:cloudfrequency", "--", f"SCENES={sample_scenes}",
         "AOI=533000,545000,172000,184000 [EPSG:27700]", "TARGET_CRS=EPSG:27700", "RESOLUTION=5", "MEASURE=1",
         *(f"{k}={v}" for k, v in outputs.items())],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, QT_QPA_PLATFORM="offscreen", XDG_CACHE_HOME=str(cache)))
    try:
        deadline = time.monotonic() + 240
        parts = []
        while not parts and child.poll() is None and time.monotonic() < deadline:
            parts = [p.name for p in out.iterdir() if ".part-" in p.name]
            time.sleep(0.002)
        assert parts and child.poll() is None, "no partial file seen while the run wrote its outputs"
        child.send_signal(getattr(signal, signame))
        sent = time.monotonic()
        stdout, stderr = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert time.monotonic() - sent < 10
    assert child.returncode == 1, (child.returncode, stderr[-2000:])
    name = {"SIGTERM": "SIGTERM", "SIGINT": "Ctrl-C (SIGINT)"}[signame]
    assert (f"Stopped by {name}: the run was cancelled and its partial files removed; outputs finished before the "
            "signal are kept.") in stderr
    assert [p.name for p in out.iterdir()] == []  # no partial file, no output half-written under its name
