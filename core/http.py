"""HTTP GETs for the COG reader: urllib3, with what reading from servers one does not control needs.

urllib3 does the protocol (keep-alive pools, TLS, chunked bodies, proxies named by the
environment). Around it, every request here has

* **a deadline for the whole request** (connection, answer, body, retries and their waits):
  :func:`timeout_s`, 60 s unless ``CLOUDPROB_HTTP_TIMEOUT`` says otherwise. A socket timeout
  restarts with every byte, so a server trickling one byte every 20 s would keep a read alive
  for ever; a watchdog thread shuts the socket down at the deadline instead;
* **Cancel**: the requests of a thread working for a :class:`~core.progress.Progress` (see
  :func:`owned_by`) stop within a tenth of a second of its Cancel, with
  :class:`~core.progress.Cancelled`, even in the middle of a body;
* **a byte limit decided before the body is read**: the caller says, from the status and the
  headers, how many bytes it accepts; a larger ``Content-Length`` is refused before a byte of
  the body arrives, and a body that runs past the limit is cut off. Nothing is allocated from
  what a server claims;
* **places** (:class:`Places`): the address every connection actually reached is checked
  (link-local and cloud metadata addresses never; loopback and private networks only when
  allowed), and so is every redirect (never from https to http, never to another scheme);
* redirects followed by us (at most 5), retries of connection failures and of 429/5xx answers
  (``Retry-After`` obeyed up to 30 s and within the deadline), none of certificate failures,
  refusals or answers that break the rules above;
* **signing** where the places say so (``Places.signer``, e.g. Planetary Computer's SAS tokens,
  :mod:`core.planetary`): each attempt is signed just before it is sent, the href stays the
  name of the file, and no message ever shows the token.

Why not core's own client any more: ``benchmarks/bench_reader.py`` measured screening over TLS
with 50 ms per request and a 100 Mbit/s link at the default concurrency: 0.47 s through urllib3,
0.47 s through the bare client it replaces (0.99×). Its 0.1 ms less work per request showed only
on a bare loopback.
"""
from __future__ import annotations

import base64
import ipaddress
import os
import socket
import ssl
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable
from urllib.parse import unquote, urljoin, urlsplit

from .progress import Cancelled

RETRIES = 3
TIMEOUT_S = 60.0  # a whole request, retries included (CLOUDPROB_HTTP_TIMEOUT overrides)
CONNECT_TIMEOUT_S = 10.0
MAX_REDIRECTS = 5
MAX_RETRY_AFTER_S = 30.0
MAX_PER_HOST = 128  # kept-alive connections per host
MAX_ERROR_BODY = 64 * 1024  # bytes read of an answer that is not the data asked for
WATCH_INTERVAL_S = 0.1
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
USER_AGENT = "cloudprob (QGIS plugin Cloud Probability)"


def timeout_s() -> float:
    """The deadline of one request, in seconds: ``CLOUDPROB_HTTP_TIMEOUT`` or 60."""
    try:
        value = float(os.environ.get("CLOUDPROB_HTTP_TIMEOUT", ""))
        return value if value > 0 else TIMEOUT_S
    except ValueError:
        return TIMEOUT_S


class TransportError(Exception):
    """No usable answer came; the message names the URL and the cause. ``kind`` is one of
    ``connection`` (refused, reset, timed out: retried first), ``certificate``, ``deadline``,
    ``too-large``, ``malformed`` (an answer breaking HTTP or the caller's rules), ``bad-url``,
    ``unknown-host`` and ``refused`` (a place the request may not go, see :class:`Places`)."""

    def __init__(self, message: str, kind: str = "connection"):
        super().__init__(message)
        self.kind = kind


@dataclass
class Response:
    status: int
    reason: str
    headers: dict  # lower-case names
    body: bytes
    url: str = ""  # after redirects


# ---------------------------------------------------------------------------------------------
# Places: which addresses a request may reach

_METADATA = {
    ipaddress.ip_address("169.254.169.254"),  # AWS, Azure, GCP, OpenStack, Oracle…
    ipaddress.ip_address("169.254.170.2"),  # AWS ECS task credentials
    ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
    ipaddress.ip_address("fd00:ec2::254"),  # AWS over IPv6
}


def address_kind(ip: str) -> str:
    """``public``, ``loopback``, ``private``, ``link-local``, ``metadata`` (a cloud instance
    metadata service) or ``unusable`` (unspecified, multicast, reserved)."""
    address = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address in _METADATA:
        return "metadata"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_unspecified or address.is_multicast or address.is_reserved:
        return "unusable"
    if address.is_private or address in ipaddress.ip_network("100.64.0.0/10"):
        return "private"
    return "public"


@dataclass(frozen=True)
class Places:
    """Where requests may go. Link-local addresses and cloud metadata services never (no COG
    lives there; a request there can fetch the machine's credentials); ``loopback`` (this
    machine) and ``private`` (its networks) as allowed. ``source`` names who decided, for the
    messages."""

    loopback: bool = True
    private: bool = True
    source: str = ""
    # how requests to some hosts are authorised: an object with ``applies(url)``,
    # ``sign(url, deadline)`` (the URL to request, raising TransportError) and
    # ``invalidate(url)`` (core.planetary.Signing: SAS tokens of Planetary Computer's blobs).
    # The href stays the name of the file everywhere (caches, messages); only the request
    # carries the token, signed anew for each request so that a refreshed token is used.
    signer: object = None

    def refusal(self, host: str, ip: str) -> str | None:
        """Why ``host`` at address ``ip`` may not be reached, or None."""
        kind = address_kind(ip)
        where = f"{host} ({ip})" if host != ip else ip
        if kind == "metadata":
            return f"{where} is a cloud metadata address: never read"
        if kind == "link-local":
            return f"{where} is a link-local address: never read"
        if kind == "unusable":
            return f"{where} is no server's address (unspecified, multicast or reserved): never read"
        if kind == "loopback" and not self.loopback:
            return f"{where} is this machine (loopback), which {self.source or 'the catalogue'} may not point to"
        if kind == "private" and not self.private:
            return f"{where} is a private-network address, which {self.source or 'the catalogue'} may not point to"
        return None

    def check_host(self, host: str, port: int | None = None) -> None:
        """Resolve ``host`` and refuse it when any of its addresses may not be reached (for reads
        whose connections we do not make ourselves: GDAL's, a proxy's)."""
        try:
            infos = socket.getaddrinfo(host, port or 443, proto=socket.IPPROTO_TCP)
        except (OSError, UnicodeError):
            return  # unresolvable: the read itself will say so
        for info in infos:
            reason = self.refusal(host, info[4][0])
            if reason:
                raise TransportError(f"refused: {reason}", "refused")


ANYWHERE = Places()  # reads whose hrefs no catalogue gave: only the never-places are refused


# ---------------------------------------------------------------------------------------------
# Requests in flight: deadlines and Cancel

_local = threading.local()


@contextmanager
def owned_by(owner):
    """Requests made by this thread inside the block belong to ``owner`` (an object with
    ``is_canceled()``, e.g. a :class:`~core.progress.Progress`): once it is cancelled they stop
    with :class:`~core.progress.Cancelled`, whatever they are waiting for."""
    before = getattr(_local, "owner", None)
    _local.owner = owner
    try:
        yield
    finally:
        _local.owner = before


def current_owner():
    """The owner set by :func:`owned_by` in this thread (None outside)."""
    return getattr(_local, "owner", None)


class _InFlight:
    """One request: its deadline, its owner, the connection it is using."""

    def __init__(self, deadline: float, owner, places: Places, via_proxy: bool):
        self.deadline, self.owner, self.places, self.via_proxy = deadline, owner, places, via_proxy
        self.conn = None
        self.stopped: str | None = None  # "deadline" or "cancelled", set by the watchdog

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def stop(self, why: str) -> None:
        if self.stopped is None:
            self.stopped = why
        sock = getattr(self.conn, "sock", None)
        if sock is not None:
            try:  # wakes a thread blocked in recv/send on it (close() would not)
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except (OSError, ValueError, TypeError):
                pass


class _Watchdog:
    """One thread for the process: stops requests past their deadline or cancelled."""

    def __init__(self):
        self._lock = threading.Condition()
        self._requests: set[_InFlight] = set()
        self._thread: threading.Thread | None = None

    def add(self, request: _InFlight) -> None:
        with self._lock:
            self._requests.add(request)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="cloudprob-http-watchdog", daemon=True)
                self._thread.start()
            self._lock.notify()

    def remove(self, request: _InFlight) -> None:
        with self._lock:
            self._requests.discard(request)

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._requests:
                    if not self._lock.wait(timeout=30.0):
                        self._thread = None
                        return
                requests = list(self._requests)
            now = time.monotonic()
            cancelled: dict[int, bool] = {}
            for request in requests:
                owner = request.owner
                if owner is not None and id(owner) not in cancelled:
                    try:
                        cancelled[id(owner)] = bool(owner.is_canceled())
                    except Exception:  # an owner that cannot answer does not stop anything
                        cancelled[id(owner)] = False
                if owner is not None and cancelled[id(owner)]:
                    request.stop("cancelled")
                elif now >= request.deadline:
                    request.stop("deadline")
            time.sleep(WATCH_INTERVAL_S)


_WATCHDOG = _Watchdog()


class _RefusedPeer(Exception):
    pass


def _checked(base):
    """A urllib3 connection class that lets the watchdog reach its socket and checks the address
    it connected to against the request's places before a byte of the request is sent."""

    class Checked(base):
        _cloudprob_peer: str | None = None

        def _new_conn(self):
            request = getattr(_local, "request", None)
            if request is not None:
                request.conn = self
                self.timeout = max(0.01, min(CONNECT_TIMEOUT_S, request.remaining()))
            sock = super()._new_conn()
            try:
                self._cloudprob_peer = sock.getpeername()[0]
            except OSError:
                self._cloudprob_peer = None
            self._check(request)
            if request is not None:
                sock.settimeout(max(0.01, request.remaining()))
            return sock

        def request(self, *args, **kwargs):
            request = getattr(_local, "request", None)
            if request is not None:
                request.conn = self
                if self.sock is not None:  # a kept-alive connection: checked for this request's places
                    self._check(request)
                    self.sock.settimeout(max(0.01, request.remaining()))
            return super().request(*args, **kwargs)

        def _check(self, request) -> None:
            if request is None or request.via_proxy or self._cloudprob_peer is None:
                return
            reason = request.places.refusal(self.host, self._cloudprob_peer)
            if reason:
                self.close()
                raise _RefusedPeer(reason)

    Checked.__name__ = f"Checked{base.__name__}"
    return Checked


def _pool_classes():
    import urllib3
    from urllib3.connection import HTTPConnection, HTTPSConnection

    class HttpPool(urllib3.HTTPConnectionPool):
        ConnectionCls = _checked(HTTPConnection)

    class HttpsPool(urllib3.HTTPSConnectionPool):
        ConnectionCls = _checked(HTTPSConnection)

    return {"http": HttpPool, "https": HttpsPool}


# ---------------------------------------------------------------------------------------------
# The client

Limit = Callable[[int, dict], int]


class Client:
    """urllib3 pools (direct, or through the environment's proxy for a host), shared by threads."""

    def __init__(self):
        self._lock = threading.Lock()
        self._managers: dict = {}  # (scheme, netloc) -> (manager, via proxy)
        self._bundle: object = ()  # the CA bundle the https pools were made with
        self._pool_classes = None

    def get(self, url: str, headers: dict[str, str] | None = None, *, limit: int | Limit = 64 * 1024 * 1024,
            places: Places = ANYWHERE, deadline: float | None = None) -> Response:
        """GET ``url``: redirects followed within ``places``, failures that may pass retried, all
        within :func:`timeout_s` (and before ``deadline``, a ``time.monotonic()`` value, if
        given). ``limit``: the most body bytes accepted, or a function of the status and headers
        (lower-case names) giving it, called before the body is read (it may raise
        :class:`TransportError` itself). With a ``places.signer`` that applies to ``url``, each
        attempt is signed anew (a 403 answer once more with a fresh token); the response's
        ``url`` and every message name ``url`` unsigned. Raises :class:`TransportError`, or
        :class:`~core.progress.Cancelled` when the thread's owner (:func:`owned_by`) is cancelled."""
        own = time.monotonic() + timeout_s()
        deadline = own if deadline is None else min(deadline, own)
        owner = current_owner()
        redirects = attempt = 0
        first = url
        signer = places.signer
        resigned = False
        while True:
            if owner is not None and owner.is_canceled():
                raise Cancelled("cancelled by the user")
            requested = url
            if signer is not None and redirects == 0 and signer.applies(url):
                requested = signer.sign(url, deadline)  # a TransportError of its own ("signing") if no token
            try:
                response = self._once(requested, headers or {}, limit, places, deadline, owner)
            except TransportError as exc:
                if requested != url:  # the token never appears in a message
                    exc = TransportError(str(exc).replace(requested, url), exc.kind)
                if redirects and url != first:  # the href asked for, then where it led
                    exc = TransportError(f"{first}, redirected to {exc}", exc.kind)
                if exc.kind != "connection" or attempt >= RETRIES:
                    raise exc from None
                attempt += 1
                self._wait(_backoff(attempt), deadline, owner, exc)
                continue
            if requested != url and response.status == 403 and not resigned:
                # refused although signed: the token may have been revoked or have expired early
                # (another clock); once more with a new one
                signer.invalidate(url)
                resigned = True
                continue
            location = response.headers.get("location")
            if response.status in REDIRECT_STATUS and location:
                if redirects >= MAX_REDIRECTS:
                    raise TransportError(f"{first}: more than {MAX_REDIRECTS} redirects", "malformed")
                target = urljoin(url, location)
                _check_redirect(url, target, first)
                url, redirects = target, redirects + 1
                continue
            if response.status in RETRY_STATUS and attempt < RETRIES:
                wait = _retry_after(response.headers, attempt + 1)
                if time.monotonic() + wait < deadline:
                    attempt += 1
                    self._wait(wait, deadline, owner, None)
                    continue
            response.url = url
            return response

    @staticmethod
    def _wait(seconds: float, deadline: float, owner, cause) -> None:
        end = min(deadline, time.monotonic() + seconds)
        while True:
            if owner is not None and owner.is_canceled():
                raise Cancelled("cancelled by the user")
            left = end - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(left, WATCH_INTERVAL_S))
        if time.monotonic() >= deadline:
            raise TransportError(f"{cause or 'no answer'} (and no answer within {timeout_s():g} s)", "deadline")

    def _once(self, url: str, headers: dict, limit, places: Places, deadline: float, owner) -> Response:
        import urllib3

        parts = _parse(url)
        scheme = parts.scheme.lower()
        try:  # an address written out is checked before any connection is tried
            literal = str(ipaddress.ip_address(parts.hostname.split("%", 1)[0]))
        except ValueError:
            literal = None
        if literal is not None:
            reason = places.refusal(parts.hostname, literal)
            if reason:
                raise TransportError(f"{url}: refused: {reason}", "refused")
        manager, via_proxy = self._manager(scheme, parts)
        if via_proxy:  # the proxy makes the connection: check where the name leads instead
            places.check_host(parts.hostname, parts.port)
        request = _InFlight(deadline, owner, places, via_proxy)
        remaining = request.remaining()
        if remaining <= 0:
            raise TransportError(f"{url}: no answer within {timeout_s():g} s", "deadline")
        sent = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity", **headers}
        if parts.username is not None:
            token = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            sent["Authorization"] = "Basic " + base64.b64encode(token).decode("ascii")
            url = _without_userinfo(parts)
        _local.request = request
        _WATCHDOG.add(request)
        response = None
        try:
            response = manager.urlopen(
                "GET", url, headers=sent, redirect=False, retries=False, preload_content=False,
                decode_content=False, assert_same_host=False,
                timeout=urllib3.Timeout(connect=max(0.01, min(CONNECT_TIMEOUT_S, remaining)), read=max(0.01, remaining)))
            status = response.status
            names = {k.lower(): v for k, v in response.headers.items()}
            encoding = names.get("content-encoding", "identity").strip().lower()
            if status < 300 and encoding not in ("", "identity"):
                raise TransportError(f"{url}: the server compressed the answer ({encoding}) although asked not to",
                                     "malformed")
            if 200 <= status < 300:
                most = limit(status, names) if callable(limit) else int(limit)
            else:
                most = MAX_ERROR_BODY
            claimed = names.get("content-length")
            claimed_n = None
            if claimed is not None and status < 300:
                try:
                    claimed_n = int(claimed)
                except ValueError:
                    raise TransportError(f"{url}: Content-Length {claimed!r} is not a number", "malformed") from None
                if claimed_n > most:
                    raise TransportError(
                        f"{url}: the server announces {claimed_n:,} bytes, more than the {most:,} this read accepts",
                        "too-large")
            body = bytearray()
            while len(body) <= most:
                chunk = response.read(min(1 << 16, most + 1 - len(body)))
                if not chunk:
                    break
                body += chunk
                if request.stopped:
                    break
            if request.stopped:
                raise _Stopped()
            if len(body) > most:
                if status >= 300:
                    del body[most:]
                    response.close()
                else:
                    raise TransportError(f"{url}: the answer runs past the {most:,} bytes this read accepts", "too-large")
            if claimed_n is not None and len(body) < claimed_n:
                # the connection dropped mid-body: urllib3 1.26 does not enforce Content-Length and
                # hands back the part; a transport failure, retried as one
                raise TransportError(f"{url}: the answer was cut short ({len(body):,} of the {claimed_n:,} bytes "
                                     "announced)", "connection")
            response.release_conn()
            return Response(status, response.reason or "", names, bytes(body), url)
        except _Stopped:
            raise self._stopped(url, request) from None
        except _RefusedPeer as exc:
            raise TransportError(f"{url}: refused: {exc}", "refused") from None
        except TransportError:
            raise
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            if request.stopped:
                raise self._stopped(url, request) from None
            raise _transport_error(url, exc) from exc
        finally:
            _local.request = None
            _WATCHDOG.remove(request)
            if response is not None and not response.closed and response._connection is not None:
                response.close()  # an answer not read to its end: its connection is not reused
                response.release_conn()

    @staticmethod
    def _stopped(url: str, request: _InFlight) -> BaseException:
        if request.stopped == "cancelled":
            return Cancelled("cancelled by the user")
        return TransportError(f"{url}: no complete answer within {timeout_s():g} s", "deadline")

    def _manager(self, scheme: str, parts):
        """(urllib3 manager, whether it goes through a proxy) for a URL: the environment's proxy
        for this host if it names one (as curl reads ``http_proxy``/``https_proxy``/``no_proxy``),
        else the direct pools."""
        import urllib.request

        import urllib3

        bundle = _ca_bundle() if scheme == "https" else None
        key = (scheme, parts.netloc)
        with self._lock:
            if scheme == "https" and bundle != self._bundle:  # trust what is configured now
                stale = [m for k, (m, _) in self._managers.items() if k[0] == "https"]
                self._managers = {k: v for k, v in self._managers.items() if k[0] != "https"}
                self._bundle = bundle
                for manager in stale:
                    manager.clear()
            hit = self._managers.get(key)
            if hit is not None:
                return hit
            if self._pool_classes is None:
                self._pool_classes = _pool_classes()
            proxy = urllib.request.getproxies().get(scheme)
            via_proxy = bool(proxy) and not urllib.request.proxy_bypass(parts.hostname or "")
            shared = (scheme, "proxy " + proxy) if via_proxy else (scheme, "direct")
            found = self._managers.get(shared)
            if found is None:
                context = _tls_context(bundle) if scheme == "https" else None
                if via_proxy:
                    manager = urllib3.ProxyManager(proxy, maxsize=MAX_PER_HOST, block=False, ssl_context=context)
                else:
                    manager = urllib3.PoolManager(num_pools=256, maxsize=MAX_PER_HOST, block=False, ssl_context=context)
                manager.pool_classes_by_scheme = self._pool_classes
                found = self._managers[shared] = (manager, via_proxy)
            self._managers[key] = found
            return found

    def close(self) -> None:
        """Close the kept connections."""
        with self._lock:
            managers, self._managers = self._managers, {}
        for manager in {id(m): m for m, _ in managers.values()}.values():
            manager.clear()


class _Stopped(Exception):
    pass


def _parse(url: str):
    """``urlsplit`` with the checks urllib3 would fail on less clearly."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises for a port out of range
    except ValueError as exc:
        raise TransportError(f"{url}: not a valid URL ({exc})", "bad-url") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise TransportError(f"{url}: not an http(s) URL", "bad-url")
    host = parts.hostname or ""
    if not host:
        raise TransportError(f"{url}: no host name", "bad-url")
    try:
        host.encode("idna")
    except UnicodeError:
        raise TransportError(f"{url}: the host name {host!r} is not a valid internet name", "bad-url") from None
    return parts


def _without_userinfo(parts) -> str:
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return parts._replace(netloc=netloc).geturl()


def _check_redirect(source: str, target: str, first: str) -> None:
    old, new = urlsplit(source), urlsplit(target)
    scheme = new.scheme.lower()
    if scheme not in ("http", "https"):
        raise TransportError(f"{first}: refused: a redirect to {target!r}, which is not an http(s) address", "refused")
    if old.scheme.lower() == "https" and scheme == "http":
        raise TransportError(f"{first}: refused: a redirect from https to plain http ({target})", "refused")


def _transport_error(url: str, exc: BaseException) -> TransportError:
    """A urllib3/socket failure as a :class:`TransportError` of the right kind."""
    cause: BaseException | None = exc
    seen = 0
    while cause is not None and seen < 10:
        if isinstance(cause, ssl.SSLCertVerificationError) or type(cause).__name__ == "CertificateError":
            return TransportError(f"{url}: TLS certificate not trusted: {cause}", "certificate")
        nested = [a for a in getattr(cause, "args", ()) if isinstance(a, BaseException)]
        cause = getattr(cause, "reason", None) or (nested[0] if nested else None) or cause.__cause__ or cause.__context__
        seen += 1
    cause = exc
    for _ in range(10):
        if isinstance(cause, socket.gaierror):  # no such host name: asking again will not make one
            return TransportError(f"{url}: the host name could not be resolved ({cause})", "unknown-host")
        nested = [a for a in getattr(cause, "args", ()) if isinstance(a, BaseException)]
        cause = getattr(cause, "reason", None) or (nested[0] if nested else None) or cause.__cause__ or cause.__context__
        if cause is None:
            break
    if "LocationParseError" in type(exc).__name__ or isinstance(exc, (ValueError, UnicodeError)):
        return TransportError(f"{url}: not a valid URL ({exc})", "bad-url")
    return TransportError(f"{url}: {exc.__class__.__name__}: {exc}", "connection")


def _ca_bundle() -> str | None:
    bundle = os.environ.get("CURL_CA_BUNDLE")
    if not bundle:
        try:
            from osgeo import gdal

            bundle = gdal.GetConfigOption("CURL_CA_BUNDLE")
        except ImportError:  # pragma: no cover - GDAL is always there with rasterio
            pass
    return bundle if bundle and os.path.isfile(bundle) else None


def _tls_context(bundle: str | None = None) -> ssl.SSLContext:
    """The system's certificates (``SSL_CERT_FILE``/``SSL_CERT_DIR`` as OpenSSL reads them) and
    those of ``CURL_CA_BUNDLE``, which GDAL and curl users set to trust a private CA: in the
    environment or as a GDAL configuration option (``gdal.SetConfigOption``, ``--config``)."""
    context = ssl.create_default_context()
    if bundle:
        context.load_verify_locations(cafile=bundle)
    context.check_hostname = False  # urllib3 matches the name itself (an IP address gets no SNI)
    return context


def _backoff(attempt: int) -> float:
    """No wait before the first retry, then 1 s, 2 s… (urllib3's schedule with factor 0.5)."""
    return 0.0 if attempt <= 1 else 0.5 * 2 ** (attempt - 1)


def _retry_after(headers: dict, attempt: int) -> float:
    value = headers.get("retry-after", "")
    try:
        return min(MAX_RETRY_AFTER_S, max(0.0, float(value)))
    except ValueError:
        return _backoff(attempt)


_CLIENT = Client()


def get(url: str, headers: dict[str, str] | None = None, *, limit: int | Limit = 64 * 1024 * 1024,
        places: Places = ANYWHERE, deadline: float | None = None) -> Response:
    """GET ``url`` with the process's shared pools (see :meth:`Client.get`)."""
    return _CLIENT.get(url, headers, limit=limit, places=places, deadline=deadline)


def close() -> None:
    """Close the process's kept connections."""
    _CLIENT.close()
