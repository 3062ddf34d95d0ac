"""Ranged GETs on keep-alive HTTP/1.1 connections, with as little work per request as possible.

Screening reads two small ranges from each of hundreds of files; on a fast network the Python
work around each request is what the reads cost. urllib3 spends ~0.2 ms of CPU per request on
URL parsing, header objects and its pool; a request here is one formatted line, one ``sendall``
and a header block split by hand (~0.05 ms). Direct connections only: when the environment
names a proxy for a host (``http_proxy``/``https_proxy``/``no_proxy``, as curl reads them),
that host's requests go through urllib3's proxy manager instead.

What a ranged read of a static file needs, and nothing else: HTTP/1.1 with keep-alive, TLS
with the system's certificates (and ``CURL_CA_BUNDLE``'s), Content-Length or chunked bodies (or a body ended by the
server closing), redirects, retries of connection errors, timeouts and 429/5xx answers (with
Retry-After), and a silent retry when a kept-alive connection turns out to have been closed
by the server in the meantime.
"""
from __future__ import annotations

import base64
import os
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from urllib.parse import quote, unquote, urljoin, urlsplit

RETRIES = 3
TIMEOUT_S = 60.0
CONNECT_TIMEOUT_S = 10.0
MAX_REDIRECTS = 5
MAX_HEAD_BYTES = 64 * 1024
MAX_IDLE_PER_HOST = 128
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
USER_AGENT = "cloudprob (QGIS plugin Cloud Probability)"


class TransportError(Exception):
    """No usable answer came (connection, TLS, timeout, a malformed response), after retries."""


@dataclass
class Response:
    status: int
    reason: str
    headers: dict  # lower-case names
    body: bytes


class _Stale(Exception):
    """A kept-alive connection the server had closed: send the request again on a new one."""


class _Malformed(Exception):
    pass


class _Connection:
    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None):
        sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls is not None:
                sock = tls.wrap_socket(sock, server_hostname=host)
            sock.settimeout(TIMEOUT_S)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self.buf = bytearray()
        self.used = False  # an answered request: a later failure before any byte means "stale"

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def exchange(self, request: bytes) -> tuple[Response, bool]:
        """Send ``request``, read the answer; (response, whether the connection can be kept)."""
        try:
            self.sock.sendall(request)
            version, status, reason, headers = self._read_head()
        except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, _Stale) as exc:
            if self.used and not self.buf:
                raise _Stale() from exc
            raise
        self.used = True
        if 100 <= status < 200 or status in (204, 304):
            body, delimited = b"", True
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            body, delimited = self._read_chunked(), True
        elif "content-length" in headers:
            try:
                length = int(headers["content-length"])
            except ValueError:
                length = -1
            if length < 0:
                raise _Malformed(f"Content-Length {headers['content-length']!r}")
            body, delimited = self._read_exactly(length), True
        else:
            body, delimited = self._read_to_close(), False
        connection = headers.get("connection", "").lower()
        keep = delimited and not self.buf and (
            "keep-alive" in connection if version == "HTTP/1.0" else "close" not in connection)
        return Response(status, reason, headers, body), keep

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        self.buf += chunk
        return True

    def _read_head(self):
        while True:
            end = self.buf.find(b"\r\n\r\n")
            while end < 0:
                if len(self.buf) > MAX_HEAD_BYTES:
                    raise _Malformed("response header too large")
                if not self._fill():
                    if not self.buf:
                        raise _Stale("connection closed before an answer")
                    raise _Malformed("connection closed within the response header")
                end = self.buf.find(b"\r\n\r\n")
            lines = self.buf[:end].decode("latin-1").split("\r\n")
            del self.buf[:end + 4]
            parts = lines[0].split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
                raise _Malformed(f"not an HTTP status line: {lines[0][:80]!r}")
            status = int(parts[1])
            if status == 100:
                continue  # "100 Continue" precedes the real answer
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            return parts[0], status, parts[2] if len(parts) > 2 else "", headers

    def _read_exactly(self, length: int) -> bytes:
        if len(self.buf) >= length:
            body = bytes(self.buf[:length])
            del self.buf[:length]
            return body
        out = bytearray(length)
        have = len(self.buf)
        out[:have] = self.buf
        self.buf.clear()
        view = memoryview(out)
        while have < length:
            got = self.sock.recv_into(view[have:], length - have)
            if not got:
                raise _Malformed(f"connection closed after {have} of {length} body bytes")
            have += got
        return bytes(out)

    def _read_line(self) -> bytes:
        end = self.buf.find(b"\r\n")
        while end < 0:
            if len(self.buf) > MAX_HEAD_BYTES or not self._fill():
                raise _Malformed("bad chunked body")
            end = self.buf.find(b"\r\n")
        line = bytes(self.buf[:end])
        del self.buf[:end + 2]
        return line

    def _read_chunked(self) -> bytes:
        parts = []
        while True:
            try:
                size = int(self._read_line().split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _Malformed("bad chunk size") from None
            if size == 0:
                while self._read_line():  # trailers, up to the empty line
                    pass
                return b"".join(parts)
            parts.append(self._read_exactly(size))
            if self._read_line():
                raise _Malformed("chunk not followed by CRLF")

    def _read_to_close(self) -> bytes:
        while self._fill():
            pass
        body = bytes(self.buf)
        self.buf.clear()
        return body


class Client:
    """Keep-alive connections per (scheme, host, port), each used by one thread at a time."""

    def __init__(self):
        self._idle: dict[tuple, list[_Connection]] = {}
        self._lock = threading.Lock()
        self._tls: ssl.SSLContext | None = None
        self._routes: dict[tuple, object] = {}  # (scheme, netloc) → None (direct) or a urllib3 proxy manager

    def get(self, url: str, headers: dict[str, str]) -> Response:
        """GET ``url``, following redirects and retrying what may succeed when tried again.
        Raises :class:`TransportError` when no HTTP answer could be had."""
        redirects = attempt = 0
        while True:
            try:
                response = self._get_once(url, headers)
            except (OSError, _Malformed, _Stale) as exc:
                if isinstance(exc, ssl.SSLCertVerificationError) or attempt >= RETRIES:
                    raise TransportError(f"{url}: {exc.__class__.__name__}: {exc}") from exc
                attempt += 1
                time.sleep(_backoff(attempt))
                continue
            location = response.headers.get("location")
            if response.status in REDIRECT_STATUS and location and redirects < MAX_REDIRECTS:
                url = urljoin(url, location)
                redirects += 1
                continue
            if response.status in RETRY_STATUS and attempt < RETRIES:
                attempt += 1
                time.sleep(_retry_after(response.headers, attempt))
                continue
            return response

    def _get_once(self, url: str, headers: dict[str, str]) -> Response:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise TransportError(f"{url}: not an http(s) URL")  # nothing to retry
        proxy = self._route(scheme, parts)
        if proxy is not None:
            return _through_proxy(proxy, url, headers)
        host = parts.hostname or ""
        port = parts.port or (443 if scheme == "https" else 80)
        authority = (f"[{host}]" if ":" in host else host) + ("" if port == (443 if scheme == "https" else 80)
                                                               else f":{port}")
        target = quote(parts.path or "/", safe="/%:@!$&'()*+,;=~") + (
            "?" + quote(parts.query, safe="/%:@!$&'()*+,;=~?") if parts.query else "")
        lines = [f"GET {target} HTTP/1.1", f"Host: {authority}", f"User-Agent: {USER_AGENT}"]
        if parts.username is not None:
            token = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            lines.append("Authorization: Basic " + base64.b64encode(token).decode("ascii"))
        lines.extend(f"{k}: {v}" for k, v in headers.items())
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        key = (scheme, host, port)
        for fresh in (False, True):
            conn = self._checkout(key, fresh)
            try:
                response, keep = conn.exchange(request)
            except _Stale:
                conn.close()
                if fresh:
                    raise
                continue  # the server closed it while it was idle: once more on a new one
            except BaseException:
                conn.close()
                raise
            if keep:
                self._checkin(key, conn)
            else:
                conn.close()
            return response
        raise AssertionError("unreachable")

    def _checkout(self, key: tuple, fresh: bool) -> _Connection:
        if not fresh:
            with self._lock:
                idle = self._idle.get(key)
                if idle:
                    return idle.pop()
        tls = None
        if key[0] == "https":
            with self._lock:
                if self._tls is None:
                    self._tls = _tls_context()
                tls = self._tls
        return _Connection(key[1], key[2], tls)

    def _checkin(self, key: tuple, conn: _Connection) -> None:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < MAX_IDLE_PER_HOST:
                idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        """Close the idle connections."""
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()

    def _route(self, scheme: str, parts):
        key = (scheme, parts.netloc)
        try:
            return self._routes[key]
        except KeyError:
            pass
        import urllib.request

        proxy = urllib.request.getproxies().get(scheme)
        manager = None
        if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
            import urllib3

            # https origins are reached through a CONNECT tunnel: the same certificates trusted
            manager = urllib3.ProxyManager(proxy, retries=False, timeout=urllib3.Timeout(
                connect=CONNECT_TIMEOUT_S, read=TIMEOUT_S), maxsize=MAX_IDLE_PER_HOST, block=False,
                ssl_context=_tls_context(for_urllib3=True) if scheme == "https" else None)
        with self._lock:
            return self._routes.setdefault(key, manager)


def _through_proxy(manager, url: str, headers: dict[str, str]) -> Response:
    import urllib3

    try:
        r = manager.request("GET", url, headers=headers, redirect=False, retries=False)
    except urllib3.exceptions.HTTPError as exc:
        cause = exc
        while cause is not None:  # certificate failures are not retried, as on a direct connection
            if isinstance(cause, ssl.SSLCertVerificationError):
                raise cause from exc
            if type(cause).__name__ == "CertificateError":  # urllib3 1.x's own name check
                raise ssl.SSLCertVerificationError(f"CertificateError: {cause}") from exc
            cause = cause.__cause__ or cause.__context__
        raise _Malformed(f"{exc.__class__.__name__}: {exc}") from exc
    return Response(r.status, r.reason or "", {k.lower(): v for k, v in r.headers.items()}, r.data)


def _tls_context(for_urllib3: bool = False) -> ssl.SSLContext:
    """The system's certificates (``SSL_CERT_FILE``/``SSL_CERT_DIR`` as OpenSSL reads them) and
    those of ``CURL_CA_BUNDLE``, which GDAL and curl users set to trust a private CA: in the
    environment or as a GDAL configuration option (``gdal.SetConfigOption``, ``--config``)."""
    context = ssl.create_default_context()
    bundle = os.environ.get("CURL_CA_BUNDLE")
    if not bundle:
        try:
            from osgeo import gdal

            bundle = gdal.GetConfigOption("CURL_CA_BUNDLE")
        except ImportError:  # pragma: no cover - GDAL is always there with rasterio
            pass
    if bundle and os.path.isfile(bundle):
        context.load_verify_locations(cafile=bundle)
    if for_urllib3:
        context.check_hostname = False  # urllib3 matches the name itself (an IP address gets no SNI)
    return context


def _backoff(attempt: int) -> float:
    """No wait before the first retry, then 1 s, 2 s… (urllib3's schedule with factor 0.5)."""
    return 0.0 if attempt <= 1 else 0.5 * 2 ** (attempt - 1)


def _retry_after(headers: dict, attempt: int) -> float:
    value = headers.get("retry-after", "")
    try:
        return min(30.0, max(0.0, float(value)))
    except ValueError:
        return _backoff(attempt)


_CLIENT = Client()


def get(url: str, headers: dict[str, str]) -> Response:
    """GET ``url`` with the process's shared connections (see :class:`Client`)."""
    return _CLIENT.get(url, headers)
