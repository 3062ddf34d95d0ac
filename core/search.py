"""STAC item search for an area and a period, through pystac-client.

Server-side ``query``/``filter``/``sortby`` are used only where the API declares the
conformance class; whatever the server does, every returned item is checked again on the
client (collection, period, area, scene cloud cover), because real servers silently ignore
filters they do not support — Earth Search pages that asked for ``eo:cloud_cover <= 40``
still hold 99.996 % items.

Every request goes through :func:`make_stac_io`'s object (pystac-client's ``StacApiIO`` on requests and
urllib3, with its sending and reading bounded): one deadline for the whole request, Cancel
honoured within a fraction of a second, responses of bounded size, ``Retry-After`` obeyed up to
a cap, ``next`` links kept on the API's own address, paging loops detected, and a search that
ends short of the count the server matched is an error, never a shorter list.
"""
from __future__ import annotations

import json
import re
import socket
import threading
import time as clock
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Iterator
from urllib.parse import urljoin, urlsplit

from .progress import Cancelled, NullProgress, Progress, check_cancel
from .catalogue import with_catalogue
from .stac import ItemError, Scene, normalise_item, parse_datetime

EARTH_SEARCH_V1 = "https://earth-search.aws.element84.com/v1"
DEFAULT_COLLECTION = "sentinel-2-c1-l2a"  # Collection 1: carries the `cloud` asset

CONFORMANCE_QUERY = "query"
CONFORMANCE_FILTER = "filter"
CONFORMANCE_SORT = "sort"


class SearchError(Exception):
    """The search cannot be done; the message says why in words a user understands."""


class NoScenesError(SearchError):
    """The search ended without a scene over the area: often the area itself is not the one meant."""


@dataclass(frozen=True)
class SearchRequest:
    """What to search for.

    ``bbox`` is (west, south, east, north) in degrees, EPSG:4326. ``start`` and ``end`` are
    UTC calendar days, both included. ``max_scene_cloud`` is ``eo:cloud_cover`` in percent
    (100 = no filter). ``max_items`` = 0 means all.
    """

    url: str
    collection: str
    bbox: tuple[float, float, float, float]
    start: date
    end: date
    max_scene_cloud: float = 100.0
    max_items: int = 0
    page_size: int = 100
    timeout: float = 60.0  # seconds for one HTTP request, all of it: connecting, waiting, every byte
    retries: int = 5  # on 429, 5xx and connections dropped mid-answer, with exponential back-off
    max_retry_wait: float = 60.0  # seconds: a longer Retry-After is cut to this (and said)
    max_pages: int = 5_000  # pages of one search (or of /collections); more is an error
    max_returned: int = 50_000  # items the server may send for one search; more is an error
    max_response_bytes: int = 64 * 1024 * 1024  # one page (an Earth Search page of 100 is ~2 MB)
    max_total_bytes: int = 1024 * 1024 * 1024  # all pages of one search together


@dataclass
class SearchResult:
    """Scenes found, oldest first, and what the search did to get them."""

    scenes: list[Scene]
    server_side: list[str] = field(default_factory=list)  # filters the server was asked to apply
    returned: int = 0  # items the server sent
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> items dropped on the client
    matched: int | None = None  # the server's own count, if it gives one


def validate(request: SearchRequest) -> None:
    """Raise :class:`SearchError` for a request that cannot make sense."""
    check_url(request.url)
    if not request.collection.strip():
        raise SearchError("No collection given.")
    if request.end < request.start:
        raise SearchError(f"The end date {request.end.isoformat()} is before the start date {request.start.isoformat()}.")
    west, south, east, north = request.bbox
    if not (-180.0 <= west <= 180.0 and -180.0 <= east <= 180.0 and -90.0 <= south <= north <= 90.0):
        raise SearchError(f"The area {request.bbox} is not a valid longitude/latitude box.")
    if west > east:
        raise SearchError("Areas crossing the antimeridian are not supported; split the area in two.")
    if not (east > west and north > south):
        raise SearchError(
            f"The area {tuple(round(v, 6) for v in request.bbox)} has no extent (zero width or height): "
            "give an area, not a point or a line."
        )
    if not 0.0 <= request.max_scene_cloud <= 100.0:
        raise SearchError(f"The scene cloud limit must be between 0 and 100 %, not {request.max_scene_cloud}.")
    if request.max_items < 0:
        raise SearchError("The maximum number of scenes cannot be negative (0 means all).")


_HOST_FIRST = re.compile(r"^[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*(:\d+)?(/|$)")  # host[:port][/path], no scheme


def check_url(url: str) -> None:
    """Raise :class:`SearchError` unless ``url`` is an http(s) address with a host.

    Without this, a URL typed without ``https://`` reaches pystac, which reads it as a local
    file name and fails with ``[Errno 2] No such file or directory``.
    """
    text = (url or "").strip()
    if not text:
        raise SearchError("No STAC API URL given.")
    parts = urlsplit(text)
    if parts.scheme.lower() in ("http", "https") and parts.hostname:
        return
    example = f" (for example {EARTH_SEARCH_V1})"
    if "://" not in text and _HOST_FIRST.match(text):
        raise SearchError(
            f"The STAC API URL '{text}' has no 'https://' at its start: write it as 'https://{text}'."
        )
    raise SearchError(
        f"The STAC API URL '{text}' is not a web address: it must start with https:// or http://{example}."
    )


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port or (443 if scheme == "https" else 80)


def _host(url: str) -> str:
    """``host`` or ``host:port`` of ``url``, as a user would recognise it."""
    parts = urlsplit(url)
    return parts.netloc.rsplit("@", 1)[-1] or url


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _Attempt:
    """One try of one request, run in a worker thread; the caller may abandon it."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.abandoned = threading.Event()
        self.sock: socket.socket | None = None
        self.result: tuple | None = None  # (status, reason, headers, body, final url)
        self.error: BaseException | None = None

    def abort(self) -> None:
        """Stop the worker now: shutting the socket down wakes a read blocked in the kernel."""
        self.abandoned.set()
        sock = self.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


_current = threading.local()  # the _Attempt of the worker thread, for the connection to register its socket


def _tracked_adapter():
    """A requests ``HTTPAdapter`` whose connections tell the attempt running them their socket,
    so that Cancel or the deadline can end a read blocked in the kernel (a server that accepts
    and never answers, or sends a byte now and then) instead of abandoning a thread to it."""
    from requests.adapters import HTTPAdapter
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    def register(conn) -> None:
        attempt = getattr(_current, "attempt", None)
        if attempt is not None:
            attempt.sock = conn.sock
            if attempt.abandoned.is_set():
                attempt.abort()

    class TrackedHTTPConnection(HTTPConnection):
        def request(self, *args, **kwargs):
            try:
                return super().request(*args, **kwargs)
            finally:
                register(self)

    class TrackedHTTPSConnection(HTTPSConnection):
        def request(self, *args, **kwargs):
            try:
                return super().request(*args, **kwargs)
            finally:
                register(self)

    class TrackedHTTPPool(HTTPConnectionPool):
        ConnectionCls = TrackedHTTPConnection

    class TrackedHTTPSPool(HTTPSConnectionPool):
        ConnectionCls = TrackedHTTPSConnection

    pools = {"http": TrackedHTTPPool, "https": TrackedHTTPSPool}

    class TrackedAdapter(HTTPAdapter):
        def init_poolmanager(self, *args, **kwargs):
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = pools

        def proxy_manager_for(self, *args, **kwargs):
            manager = super().proxy_manager_for(*args, **kwargs)
            manager.pool_classes_by_scheme = pools
            return manager

    return TrackedAdapter(max_retries=0)  # retries are ours: cancellable, Retry-After capped


_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


def make_stac_io(request: SearchRequest, progress: Progress | None = None):
    """The pystac-client ``StacApiIO`` all requests of ``request`` go through, every one bounded
    (see ``_BoundedStacIO`` in :func:`_bounded_io_class`)."""
    return _bounded_io_class()(request, progress or NullProgress())


_IO_CLASS: list = []


def _bounded_io_class():
    if _IO_CLASS:
        return _IO_CLASS[0]
    from pystac.link import Link
    from pystac_client.stac_api_io import StacApiIO
    from requests import Request

    class _BoundedStacIO(StacApiIO):
        """Requests with one deadline each (connect, wait and read together), Cancel polled every
        0.1 s, bounded response sizes, our own cancellable retries with ``Retry-After`` capped,
        paging with bounds, loop detection and ``next`` links kept on the API's address.

        pystac-client's ``Client.open`` resets a ``StacApiIO``'s ``timeout`` to None; nothing here
        reads that attribute, the bounds come from the :class:`SearchRequest`.
        """

        def __init__(self, request: SearchRequest, progress: Progress):
            super().__init__(max_retries=None)
            adapter = _tracked_adapter()
            self.session.mount("http://", adapter)
            self.session.mount("https://", adapter)
            self.session.max_redirects = 5
            self.session.headers["User-Agent"] = "cloudprob (QGIS plugin Cloud Probability)"
            self.search_request = request
            self.progress = progress
            self.api_url = request.url.strip()
            self.origins = {_origin(self.api_url)}
            self.bytes_received = 0
            self.requests_made = 0

        # -------------------------------------------------------------- addresses
        def on_api(self, href: str) -> bool:
            """Whether ``href`` is on the API's own address (its root's, after any redirect of
            the root itself); http upgraded to https on the same host counts as the same."""
            scheme, host, port = _origin(href)
            for o_scheme, o_host, o_port in self.origins:
                if host != o_host:
                    continue
                if (scheme, port) == (o_scheme, o_port):
                    return True
                if o_scheme == "http" and o_port == 80 and scheme == "https" and port == 443:
                    return True
            return False

        def read_text(self, source, *args, **kwargs) -> str:
            href = source.get_absolute_href() if isinstance(source, Link) else str(source)
            if urlsplit(href or "").scheme.lower() not in ("http", "https"):
                # a remote catalogue's links never make the plugin read a local file
                raise SearchError(
                    f"The STAC API at {_host(self.api_url)} linked to '{_short(href, 120)}', which is not "
                    "an http(s) address; the plugin reads nothing else for a search."
                )
            return super().read_text(source, *args, **kwargs)

        def read_json(self, source, *args, **kwargs) -> dict:
            text = self.read_text(source, *args, **kwargs)
            try:
                return json.loads(text)
            except ValueError:
                href = source.get_absolute_href() if isinstance(source, Link) else str(source)
                raise SearchError(
                    f"The STAC API at {_host(self.api_url)} sent something that is not valid JSON for "
                    f"{_short(href, 160)} (cut short, or not JSON at all). Try again later; if it persists, "
                    "check the STAC API URL."
                ) from None

        # -------------------------------------------------------------- one request
        def request(self, href: str, method: str | None = None, headers: dict | None = None,
                    parameters: dict | None = None) -> str:
            method = (method or "GET").upper()
            if not self.on_api(href) and self.requests_made:
                raise SearchError(
                    f"The STAC API at {_host(self.api_url)} sent a link to another address ({_host(href)}); "
                    "the plugin follows links only within the API's own address, so the search stopped "
                    "and nothing was kept."
                )
            first = self.requests_made == 0
            self.requests_made += 1

            def refuse_off_api_redirect(response, *args, **kwargs):
                # called for every response, redirects included, before requests follows one
                if response.is_redirect:
                    response.close()  # a redirect's body means nothing: not read (it could be endless)
                    target = urljoin(response.url, response.headers.get("Location", ""))
                    if not first and not self.on_api(target):
                        raise SearchError(
                            f"The STAC API at {_host(self.api_url)} redirected a request to another address "
                            f"({_host(target)}); the plugin reads a search only from the API's own address, "
                            "so it stopped and kept nothing."
                        )
                return response

            hooks = {"response": [refuse_off_api_redirect]}
            if method in ("POST", "PUT", "PATCH"):
                req = Request(method=method, url=href, headers=headers, json=parameters, hooks=hooks)
            else:
                req = Request(method=method, url=href, headers=headers, params=dict(parameters or {}), hooks=hooks)
            modified = self._req_modifier(req) if self._req_modifier else None
            prepped = self.session.prepare_request(modified or req)
            send_kwargs = self.session.merge_environment_settings(prepped.url, proxies={}, stream=None, verify=True, cert=None)
            send_kwargs.pop("stream", None)  # always streamed, to bound and cancel the reading
            limit = self.search_request.retries
            failures = 0
            while True:
                check_cancel(self.progress)
                try:
                    status, reason, resp_headers, body, final_url = self._attempt(prepped, send_kwargs)
                except _Dropped as exc:
                    failures += 1
                    if failures > limit:
                        raise SearchError(
                            f"The STAC API at {_host(href)} closed the connection before its answer was complete, "
                            f"{failures} times in a row ({exc}). Try again later."
                        ) from None
                    self._wait(self._backoff(failures), f"the connection was closed mid-answer ({exc})", failures)
                    continue
                if first:
                    self.origins.add(_origin(final_url))  # the root may redirect (http to https, a new host)
                elif not self.on_api(final_url):
                    raise SearchError(
                        f"The STAC API at {_host(self.api_url)} redirected a request to another address "
                        f"({_host(final_url)}); the plugin reads a search only from the API's own address."
                    )
                if status in _RETRY_STATUS and failures < limit:
                    failures += 1
                    wait = self._retry_after(resp_headers)
                    if wait is None:
                        wait = self._backoff(failures)
                    self._wait(wait, f"it answered {status} {reason}", failures)
                    continue
                if not 200 <= status < 300:
                    raise _http_error(href, method, status, reason, resp_headers, body, failures)
                if _looks_like_html(resp_headers, body):
                    raise SearchError(
                        f"{_host(href)} is not a STAC API: it answered {_short(urlsplit(href).path or '/', 80)} with a "
                        f"web page (HTML), not STAC JSON. Check the STAC API URL: it should be the API's root, "
                        f"such as {EARTH_SEARCH_V1}."
                    )
                try:
                    return body.decode("utf-8")
                except UnicodeDecodeError:
                    raise SearchError(
                        f"The STAC API at {_host(href)} sent an answer that is not UTF-8 text; it is not STAC JSON."
                    ) from None

        def _backoff(self, failures: int) -> float:
            return min(0.5 * 2 ** (failures - 1), self.search_request.max_retry_wait)

        def _retry_after(self, headers) -> float | None:
            from urllib3.util.retry import Retry

            value = headers.get("Retry-After")
            if not value:
                return None
            try:
                seconds = Retry().parse_retry_after(value)
            except Exception:  # urllib3 raises InvalidHeader on nonsense: then back off as usual
                return None
            cap = self.search_request.max_retry_wait
            if seconds > cap:
                self.progress.warning(
                    f"The STAC API asked to wait {seconds:g} s before trying again (Retry-After); "
                    f"waiting {cap:g} s instead, the longest this plugin waits."
                )
                return cap
            return seconds

        def _wait(self, seconds: float, why: str, failures: int) -> None:
            self.progress.info(
                f"The STAC API did not answer usefully ({why}); trying again in {seconds:g} s "
                f"(retry {failures} of {self.search_request.retries})."
            )
            end = clock.monotonic() + seconds
            while True:
                check_cancel(self.progress)
                left = end - clock.monotonic()
                if left <= 0:
                    return
                clock.sleep(min(0.1, left))

        def _attempt(self, prepped, send_kwargs) -> tuple:
            """Send ``prepped`` in a worker thread and wait for it, polling Cancel and the deadline."""
            request = self.search_request
            timeout = float(request.timeout)
            deadline = clock.monotonic() + timeout
            cap = request.max_response_bytes
            attempt = _Attempt()
            session = self.session

            def work() -> None:
                _current.attempt = attempt
                response = None
                try:
                    response = session.send(prepped, stream=True, timeout=(min(10.0, timeout), timeout), **send_kwargs)
                    declared = response.headers.get("Content-Length", "")
                    if declared.strip().isdigit() and int(declared) > cap:
                        raise _TooLarge(int(declared))
                    chunks, size = [], 0
                    for chunk in response.raw.stream(64 * 1024, decode_content=True):
                        if attempt.abandoned.is_set():
                            return
                        size += len(chunk)
                        if size > cap:
                            raise _TooLarge(size)
                        chunks.append(chunk)
                    if declared.strip().isdigit() and response.raw.tell() < int(declared):
                        # urllib3 1.26 does not enforce Content-Length: a cut answer would pass as whole
                        raise _Dropped("IncompleteRead")
                    attempt.result = (response.status_code, response.reason or "", response.headers, b"".join(chunks), response.url)
                except BaseException as exc:  # handed to the waiting thread
                    attempt.error = exc
                finally:
                    if response is not None:
                        response.close()
                    _current.attempt = None
                    attempt.done.set()

            worker = threading.Thread(target=work, name="cloudprob-stac-request", daemon=True)
            worker.start()
            while not attempt.done.wait(0.1):
                if self.progress.is_canceled():
                    attempt.abort()
                    raise Cancelled("cancelled by the user")
                if clock.monotonic() >= deadline:
                    attempt.abort()
                    raise SearchError(
                        f"The STAC API at {_host(prepped.url)} did not answer within {timeout:g} s. "
                        "The server may be overloaded or unreachable; try again later, and check the STAC API URL."
                    )
            if attempt.error is not None:
                raise _transport_error(prepped.url, attempt.error, timeout, cap)
            self.bytes_received += len(attempt.result[3])
            if self.bytes_received > request.max_total_bytes:
                raise SearchError(
                    f"The STAC API at {_host(prepped.url)} has sent {self.bytes_received / 2**20:.0f} MiB for this search, "
                    f"more than the {request.max_total_bytes / 2**20:.0f} MiB this plugin accepts for one search. "
                    "Narrow the area or the period."
                )
            return attempt.result

        # -------------------------------------------------------------- paging
        def get_pages(self, url: str, method: str | None = None, parameters: dict | None = None) -> Iterator[dict]:
            """Every page from ``url`` on, following ``next`` links; unlike pystac-client's, an
            empty page with a ``next`` link does not end the paging (the caller compares what
            arrived with the count the server matched), and the paging is bounded:
            at most ``max_pages`` pages and ``max_returned`` entries, no page or link twice,
            no ``next`` link off the API's address."""
            request = self.search_request
            self.pages_read = 0
            self.entries_read = 0
            links_seen = {_link_key(method or "GET", url, parameters): 1}
            pages_seen: dict[tuple, int] = {}
            page = self.read_json(url, method=method, parameters=parameters)
            matched = None
            while True:
                self.pages_read += 1
                if not isinstance(page, dict):
                    raise SearchError(f"The STAC API at {_host(url)} sent a page that is not a JSON object; it is not STAC JSON.")
                entries = page.get("features") or page.get("collections") or []
                if not isinstance(entries, list):
                    raise SearchError(f"The STAC API at {_host(url)} sent a page whose items are not a list; it is not STAC JSON.")
                self.entries_read += len(entries)
                if matched is None:
                    matched = _matched(page)
                ids = tuple(e.get("id") if isinstance(e, dict) else None for e in entries)
                if ids:
                    if ids in pages_seen:
                        raise SearchError(
                            f"The STAC API at {_host(url)} sent page {self.pages_read} with the same items as page "
                            f"{pages_seen[ids]}: its paging goes round in a loop, so the search stopped after "
                            f"{self.pages_read} pages and {self.entries_read} items rather than run forever. "
                            "This is a fault of the server; try again later."
                        )
                    pages_seen[ids] = self.pages_read
                if self.entries_read > request.max_returned:
                    raise SearchError(
                        f"The STAC API at {_host(url)} has sent {self.entries_read:,} items in {self.pages_read:,} pages"
                        + (f" (it matched {matched:,})" if matched is not None else "")
                        + f", more than the {request.max_returned:,} this plugin accepts for one search. "
                        "Narrow the area or the period, or set a maximum number of scenes."
                    )
                yield page
                link = next((l for l in page.get("links") or [] if isinstance(l, dict) and l.get("rel") == "next"), None)
                if link is None or not link.get("href"):
                    return
                href = urljoin(url, str(link["href"]))
                if not self.on_api(href):
                    raise SearchError(
                        f"The STAC API at {_host(self.api_url)} sent a 'next' link to another address "
                        f"({_host(href)}) on page {self.pages_read}: the plugin follows links only within the "
                        f"API's own address, so the search stopped after {self.pages_read} pages and "
                        f"{self.entries_read} items, and nothing was kept."
                    )
                link = {**link, "href": href}
                key = _link_key(link.get("method", "GET"), href, _link_body(link, parameters))
                if key in links_seen:
                    raise SearchError(
                        f"The STAC API at {_host(url)} sent a 'next' link on page {self.pages_read} back to page "
                        f"{links_seen[key]}: its paging goes round in a loop, so the search stopped after "
                        f"{self.pages_read} pages and {self.entries_read} items rather than run forever. "
                        "This is a fault of the server; try again later."
                    )
                if self.pages_read >= request.max_pages:
                    raise SearchError(
                        f"The STAC API at {_host(url)} kept sending pages: {self.pages_read:,} pages and "
                        f"{self.entries_read:,} items"
                        + (f" (it matched {matched:,})" if matched is not None else "")
                        + f", more than the {request.max_pages:,} pages this plugin reads for one search. "
                        "Narrow the area or the period, or set a maximum number of scenes."
                    )
                links_seen[key] = self.pages_read + 1
                check_cancel(self.progress)
                page = self.read_json(Link.from_dict(link), parameters=parameters)

    _IO_CLASS.append(_BoundedStacIO)
    return _BoundedStacIO


class _TooLarge(Exception):
    def __init__(self, size: int):
        super().__init__(size)
        self.size = size


class _Dropped(Exception):
    """The server closed the connection before its answer was complete: worth a retry."""


def _link_body(link: dict, parameters: dict | None) -> Any:
    if str(link.get("method", "GET")).upper() != "POST":
        return None
    body = link.get("body") or {}
    return {**(parameters or {}), **body} if link.get("merge") else body


def _link_key(method: str, href: str, body: Any) -> tuple[str, str, str]:
    return str(method).upper(), href, json.dumps(body, sort_keys=True, default=str)


def _looks_like_html(headers, body: bytes) -> bool:
    kind = (headers.get("Content-Type") or "").lower()
    if "html" in kind:
        return True
    head = body[:512].lstrip().lower()
    return head.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body"))


_STATUS_ADVICE = {
    400: "it rejected the request",
    401: "it needs you to sign in (the API may need a key or an account)",
    403: "it refused access (the API may need a key, or block this network)",
    404: "there is nothing at that address: check the STAC API URL (it should be the API's root)",
    405: "it does not allow this kind of request there: check the STAC API URL",
    429: "it is limiting the number of requests; try again later",
}


def _http_error(href: str, method: str, status: int, reason: str, headers, body: bytes, retried: int) -> SearchError:
    """A sentence for an HTTP error status: host, status, what it means; never an HTML page."""
    detail = ""
    if not _looks_like_html(headers, body):
        try:
            data = json.loads(body[:65536].decode("utf-8", "replace"))
        except ValueError:
            data = None
        if isinstance(data, dict):
            for key in ("description", "detail", "message", "error", "code"):
                if isinstance(data.get(key), str) and data[key].strip():
                    detail = f" The server said: {_short(data[key], 300)}"
                    break
    advice = _STATUS_ADVICE.get(status)
    if advice is None:
        advice = "the server is having trouble; try again later" if status >= 500 else "it rejected the request"
    after = f" after {retried} retries" if retried else ""
    path = _short(urlsplit(href).path or "/", 80)
    return SearchError(
        f"The STAC API at {_host(href)} answered {status} {reason}".rstrip()
        + f" to {method} {path}{after}: {advice}.{detail}"
    )


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and everything behind it: causes, contexts, and the exceptions requests and
    urllib3 keep in ``args`` and ``reason`` (ConnectionError → MaxRetryError → NewConnectionError
    → ConnectionRefusedError)."""
    seen: list[BaseException] = []
    stack: list = [exc]
    while stack:
        current = stack.pop()
        if not isinstance(current, BaseException) or any(current is e for e in seen):
            continue
        seen.append(current)
        stack.extend([current.__cause__, current.__context__, getattr(current, "reason", None), *current.args])
    return seen


def _transport_error(url: str, exc: BaseException, timeout: float, cap: int) -> BaseException:
    """A sentence for what requests/urllib3 raise (host, what happened, what to check); a
    connection dropped mid-answer becomes :class:`_Dropped` (retried)."""
    import ssl

    import requests

    if isinstance(exc, (SearchError, Cancelled, _Dropped)):
        return exc
    host = _host(url)
    if isinstance(exc, _TooLarge):
        return SearchError(
            f"The STAC API at {host} sent an answer of more than {cap / 2**20:.0f} MiB for one page "
            f"({exc.size / 2**20:.0f} MiB or more); this plugin stops there. The server is misbehaving, "
            "or the address is not a STAC API's."
        )
    chain = _causes(exc)
    text = " ".join(str(e) for e in chain)
    if any(isinstance(e, ConnectionRefusedError) for e in chain) or "Connection refused" in text:
        return SearchError(
            f"Cannot reach the STAC API at {host}: the connection was refused (nothing answers at that address "
            "and port). Check the STAC API URL, and that the server is running."
        )
    if any(isinstance(e, socket.gaierror) for e in chain) or any(
        m in text for m in ("Name or service not known", "Failed to resolve", "nodename nor servname", "getaddrinfo failed")
    ):
        return SearchError(
            f"Cannot reach the STAC API at {host}: no computer of that name could be found. Check the STAC API URL "
            "for typos, and that this computer is online (or its proxy settings)."
        )
    if any(type(e).__name__ == "NewConnectionError" for e in chain):  # unreachable network, no route: not retried
        why = next((e.strerror for e in chain if isinstance(e, OSError) and e.strerror), "no connection could be made")
        return SearchError(
            f"Cannot reach the STAC API at {host}: the connection could not be made ({why}). Check the STAC API URL, "
            "and that this computer is online (or its proxy settings)."
        )
    if any(isinstance(e, requests.exceptions.SSLError) or isinstance(e, ssl.SSLError) for e in chain):
        return SearchError(
            f"Cannot reach the STAC API at {host}: the secure (https) connection failed, for example its certificate "
            "is not trusted. Check the URL, this computer's clock, and whether your network needs its own "
            "certificate (REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE)."
        )
    if any(isinstance(e, requests.exceptions.ConnectTimeout) for e in chain):
        return SearchError(
            f"Cannot reach the STAC API at {host}: it did not accept a connection within {min(10.0, timeout):g} s. "
            "Check the STAC API URL, and whether a firewall or proxy stands in the way."
        )
    if any(isinstance(e, (requests.exceptions.ProxyError,)) for e in chain):
        return SearchError(f"Cannot reach the STAC API at {host} through the proxy: {_short(str(exc), 200)}. Check the proxy settings.")
    if any(isinstance(e, (requests.exceptions.Timeout, socket.timeout, TimeoutError)) for e in chain):
        return SearchError(
            f"The STAC API at {host} did not answer within {timeout:g} s. The server may be overloaded or "
            "unreachable; try again later, and check the STAC API URL."
        )
    if any(isinstance(e, requests.exceptions.TooManyRedirects) for e in chain):
        return SearchError(f"The STAC API at {host} redirected the request too many times; check the STAC API URL.")
    if any(isinstance(e, (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError,
                          ConnectionResetError, ConnectionAbortedError, BrokenPipeError)) for e in chain) or any(
        m in text for m in ("RemoteDisconnected", "IncompleteRead", "Connection aborted", "Connection broken")
    ):
        names = [type(e).__name__ for e in chain]
        known = ("RemoteDisconnected", "IncompleteRead", "ConnectionResetError", "ConnectionAbortedError", "BrokenPipeError")
        return _Dropped(next((n for n in names if n in known), names[0]))
    return SearchError(f"The request to the STAC API at {host} failed ({type(exc).__name__}: {_short(str(exc), 200)}).")


def _explain(url: str, exc: BaseException) -> SearchError:
    """A sentence for what pystac/pystac-client raise once the HTTP exchange itself went well:
    an answer that is JSON but not a STAC catalogue, or a STAC API error."""
    if isinstance(exc, SearchError):
        return exc
    not_stac = ("STACTypeError", "ClientTypeError", "STACValidationError", "does not represent a STACObject")
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    if any(isinstance(e, (json.JSONDecodeError, KeyError, TypeError, AttributeError)) for e in chain) or any(
        marker in type(e).__name__ or marker in str(e) for e in chain for marker in not_stac
    ):
        return SearchError(
            f"{url} is not a STAC API: its answer is not a STAC catalogue. Check the STAC API URL: it should be "
            f"the API's root, such as {EARTH_SEARCH_V1}."
        )
    return SearchError(f"The STAC API at {_host(url)} failed: {_short(str(exc), 300)}")


def open_client(request: SearchRequest, progress: Progress | None = None):
    """Open the API and check it offers item search; raise :class:`SearchError` otherwise."""
    from pystac_client import Client

    stac_io = make_stac_io(request, progress)
    try:
        def mapped(call):
            """``call()``, its failures as the user's sentences: pystac wraps what a read raised (our
            Cancel included) into its own STACError while it resolves the root's links."""
            try:
                return call()
            except (SearchError, Cancelled):
                raise
            except Exception as exc:  # pystac and JSON errors all mean the same to the user
                if progress is not None and progress.is_canceled():
                    raise Cancelled("cancelled by the user") from exc
                raise _explain(request.url, exc) from exc

        client = mapped(lambda: Client.open(request.url.strip(), stac_io=stac_io))
        conforms = mapped(client.to_dict).get("conformsTo") or []
        if not any("item-search" in c for c in conforms):
            raise SearchError(
                f"{request.url} is not a STAC API with item search (it declares no 'item-search' conformance class)."
            )
    except BaseException:
        stac_io.session.close()
        raise
    return client


def close_client(client: Any) -> None:
    """Close the connections a client of :func:`open_client` keeps open (its requests session),
    so none is left for the garbage collector (an unclosed-socket ResourceWarning)."""
    session = getattr(getattr(client, "_stac_io", None), "session", None)
    if session is not None:
        session.close()


def conforms(client: Any, name: str) -> bool:
    """Whether the API declares the named conformance class (``query``, ``filter``, ``sort``)."""
    declared = client.to_dict().get("conformsTo") or []
    if name == CONFORMANCE_QUERY:
        return any(c.rstrip("/").endswith("item-search#query") for c in declared)
    if name == CONFORMANCE_FILTER:
        return any(c.rstrip("/").endswith("item-search#filter") for c in declared)
    if name == CONFORMANCE_SORT:
        return any(c.rstrip("/").endswith("item-search#sort") for c in declared)
    raise ValueError(name)


def check_collection(client: Any, request: SearchRequest) -> None:
    """Raise :class:`SearchError` naming the collections on offer if ours is not one of them."""
    try:
        ids = [c.id for c in client.get_collections()]
    except (SearchError, Cancelled):
        raise
    except Exception as exc:
        raise _explain(request.url, exc) from exc
    if ids and request.collection not in ids:
        import difflib

        from .planetary import is_planetary_computer

        shown = ", ".join(sorted(ids)[:20]) + (" …" if len(ids) > 20 else "")
        close = difflib.get_close_matches(request.collection, ids, n=3, cutoff=0.75)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        if is_planetary_computer(request.url) and "sentinel-2-l2a" in ids:
            # the default is Earth Search's Collection 1, which Planetary Computer does not have
            hint = (" Planetary Computer's Sentinel-2 Level-2A collection is 'sentinel-2-l2a' (assets SCL and the "
                    "bands, no 'cloud' probability: the cloud frequency measure, not the mean probability).")
        raise SearchError(
            f"The STAC API at {request.url} has no collection '{request.collection}'.{hint} It offers: {shown}.")


def _period(request: SearchRequest) -> tuple[datetime, datetime]:
    start = datetime.combine(request.start, time(0, 0), tzinfo=timezone.utc)
    end = datetime.combine(request.end + timedelta(days=1), time(0, 0), tzinfo=timezone.utc)
    return start, end  # end excluded


def client_side_reason(scene: Scene, request: SearchRequest) -> str | None:
    """Why ``scene`` does not belong in the result of ``request``, or None if it does."""
    if scene.collection is not None and scene.collection != request.collection:
        return "other collection"
    start, end = _period(request)
    when = parse_datetime(scene.datetime)
    if not start <= when < end:
        return "outside the period"
    if scene.geometry is not None and not _intersects(scene.geometry, request.bbox):
        return "outside the area"
    if request.max_scene_cloud < 100.0:
        if scene.scene_cloud is None:
            return "no eo:cloud_cover"
        if scene.scene_cloud > request.max_scene_cloud:
            return "scene cloud above the limit"
    return None


def _intersects(geometry: dict, bbox: tuple[float, float, float, float]) -> bool:
    from shapely.geometry import box, shape

    try:
        return shape(geometry).intersects(box(*bbox))
    except Exception:  # an unreadable footprint is not a reason to lose a scene
        return True


def _pages(client: Any, request: SearchRequest, server_side: list[str]) -> Iterator[dict]:
    start, end = _period(request)
    kwargs: dict[str, Any] = {
        "collections": [request.collection],
        "bbox": list(request.bbox),
        "datetime": [start, end - timedelta(microseconds=1)],
        "limit": request.page_size,
    }
    if request.max_scene_cloud < 100.0:
        if conforms(client, CONFORMANCE_QUERY):
            kwargs["query"] = {"eo:cloud_cover": {"lte": request.max_scene_cloud}}
            server_side.append("query eo:cloud_cover")
        elif conforms(client, CONFORMANCE_FILTER):
            kwargs["filter"] = {"op": "<=", "args": [{"property": "eo:cloud_cover"}, request.max_scene_cloud]}
            kwargs["filter_lang"] = "cql2-json"
            server_side.append("filter eo:cloud_cover")
    if conforms(client, CONFORMANCE_SORT):
        kwargs["sortby"] = [{"field": "properties.datetime", "direction": "asc"}]
        server_side.append("sortby datetime")
    search = client.search(**kwargs)
    # the bounded pager itself, not pages_as_dicts(): that one ends quietly at an empty page
    yield from client._stac_io.get_pages(search.url, search.method, search.get_parameters())


def _matched(page: dict) -> int | None:
    for value in (page.get("numberMatched"), (page.get("context") or {}).get("matched")):
        if isinstance(value, int) and value >= 0:
            return value
    return None


def search_scenes(request: SearchRequest, progress: Progress | None = None) -> SearchResult:
    """Search the API for Sentinel-2 scenes of ``request``; oldest first.

    Progress advances as pages arrive; Cancel is honoured within a fraction of a second, also
    while a request is waiting (raises :class:`~core.progress.Cancelled`). Raises
    :class:`SearchError` for an unreachable or silent API, something that is not a STAC API, an
    unknown collection, a bad request, broken paging (a loop, a link off the API, more pages or
    items than the bounds), a search ending short of the count the server matched, or an empty
    result.
    """
    progress = progress or NullProgress()
    validate(request)
    client = open_client(request, progress)
    try:
        return _search(client, request, progress)
    finally:
        close_client(client)


def _search(client: Any, request: SearchRequest, progress: Progress) -> SearchResult:
    check_collection(client, request)
    check_cancel(progress)

    result = SearchResult(scenes=[])
    seen: set[str] = set()
    pages = _pages(client, request, result.server_side)
    if result.server_side:
        progress.info("Server-side: " + ", ".join(result.server_side) + " (checked again on the client).")
    page_number = 0
    stopped_early = False
    last_features = -1
    try:
        while True:
            check_cancel(progress)
            try:
                page = next(pages)
            except StopIteration:
                break
            except (SearchError, Cancelled):
                raise
            except Exception as exc:
                raise _explain(request.url, exc) from exc
            page_number += 1
            if result.matched is None:
                result.matched = _matched(page)
                if result.matched is not None and result.matched > request.max_returned and not request.max_items:
                    raise SearchError(
                        f"The STAC API at {_host(request.url)} matched {result.matched:,} items for this search, more "
                        f"than the {request.max_returned:,} this plugin accepts for one search. Narrow the area or "
                        "the period, or set a maximum number of scenes."
                    )
            features = page.get("features") or []
            last_features = len(features)
            result.returned += len(features)
            for feature in features:
                try:
                    # the API decides what its items may point to, not the items' own links
                    scene = normalise_item(with_catalogue(feature, request.url.strip())
                                           if isinstance(feature, dict) else feature)
                except ItemError as exc:
                    result.dropped["not a usable item"] = result.dropped.get("not a usable item", 0) + 1
                    progress.warning(f"Skipped an item: {exc}")
                    continue
                if scene.item_id in seen:
                    result.dropped["repeated on another page"] = result.dropped.get("repeated on another page", 0) + 1
                    continue
                seen.add(scene.item_id)
                reason = client_side_reason(scene, request)
                if reason is not None:
                    result.dropped[reason] = result.dropped.get(reason, 0) + 1
                    continue
                result.scenes.append(scene)
                if request.max_items and len(result.scenes) >= request.max_items:
                    break
            total = result.matched
            if request.max_items:
                total = min(total, request.max_items) if total else request.max_items
                progress.set_progress(min(99.0, 100.0 * len(result.scenes) / request.max_items))
            elif total:
                progress.set_progress(min(99.0, 100.0 * result.returned / total))
            progress.info(f"Page {page_number}: {len(features)} items, {len(result.scenes)} scenes kept so far.")
            if request.max_items and len(result.scenes) >= request.max_items:
                stopped_early = True
                break
    finally:
        pages.close()

    if not stopped_early and result.matched is not None and result.returned < result.matched:
        how = (f"its page {page_number} was empty" if last_features == 0 else
               f"its page {page_number} had no link to a further page")
        raise SearchError(
            f"The search at {_host(request.url)} is incomplete: the server matched {result.matched:,} items but sent "
            f"only {result.returned:,} ({how}). Nothing was kept, since a shorter list would give wrong figures; "
            "try again later, or narrow the period."
        )

    for reason, count in sorted(result.dropped.items()):
        if reason == "scene cloud above the limit" and any("cloud" in s for s in result.server_side):
            progress.warning(
                f"The server ignored the cloud filter for {count} items (eo:cloud_cover above "
                f"{request.max_scene_cloud:g} %); they were dropped on the client."
            )
        else:
            progress.info(f"Dropped {count} items: {reason}.")
    outside = result.dropped.get("outside the area", 0)
    if not result.scenes and result.returned and outside == result.returned - result.dropped.get("repeated on another page", 0):
        raise NoScenesError(
            f"The area {tuple(round(v, 5) for v in request.bbox)} (longitude/latitude) lies outside the footprint "
            f"of every one of the {outside} scenes the STAC API at {_host(request.url)} returned: no scene covers it. "
            "Check the area's coordinates and CRS."
        )
    if not result.scenes:
        raise NoScenesError(
            f"No scenes of '{request.collection}' found at {request.url} for the area "
            f"{tuple(round(v, 5) for v in request.bbox)} between {request.start.isoformat()} and "
            f"{request.end.isoformat()}"
            + (f" with scene cloud cover at most {request.max_scene_cloud:g} %" if request.max_scene_cloud < 100 else "")
            + (f" ({result.returned} items returned, all dropped: {result.dropped})" if result.returned else "")
            + "."
        )
    result.scenes.sort(key=lambda s: (s.datetime, s.item_id))
    progress.set_progress(100.0)
    return result
