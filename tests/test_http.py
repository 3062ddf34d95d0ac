"""core.http, the COG reader's requests through urllib3, against real servers on loopback:
nginx for ranged reads under threads, and Python's http.server made to answer the ways real
servers and CDNs do (chunked, close-delimited, redirects, 503 with Retry-After, closing a
kept-alive connection, TLS, a forward proxy named by the environment, and a tunnelling one for
https)."""
from __future__ import annotations

import http.server
import ssl
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import BUILD

from cloud_probability.core import cog
from cloud_probability.core import http as cphttp

BLOB = np.random.default_rng(11).integers(0, 256, 300_000, dtype=np.uint8).tobytes()


@pytest.fixture(scope="module")
def blob_on_nginx(tmp_path_factory):
    import servers

    # pytest's tmp folders are private (/tmp/pytest-of-USER is 0700), as a clone in root's home is:
    # nginx's workers must read what they serve wherever it lies (issue 22)
    root = tmp_path_factory.mktemp("test-http")
    assert any(folder.stat().st_mode & 0o077 == 0 for folder in root.parents), "a private folder above it"
    (root / "blob.bin").write_bytes(BLOB)
    with servers.CogServer(root, workdir=root / "nginx") as server:
        yield server


def test_ranges_from_nginx_under_threads_on_kept_alive_connections(blob_on_nginx):
    rng = np.random.default_rng(3)
    spans = [tuple(sorted(rng.integers(0, len(BLOB), 2))) for _ in range(400)]
    client = cphttp.Client()
    url = f"{blob_on_nginx.url}/blob.bin"
    before = blob_on_nginx.requests()

    def one(span):
        a, b = int(span[0]), int(span[1]) + 1
        r = client.get(url, {"Range": f"bytes={a}-{b - 1}"})
        return r.status, r.body == BLOB[a:b]

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, spans))
    assert all(status == 206 and same for status, same in results)
    assert blob_on_nginx.requests() - before == len(spans)  # no retries, no extra requests

    def kept() -> set[int]:
        return _kept(client)

    after_threads = kept()
    assert len(after_threads) <= 16  # never more connections than threads
    for a in range(0, 50_000, 1000):  # one thread now: always a kept connection, never a new one
        assert client.get(url, {"Range": f"bytes={a}-{a + 999}"}).body == BLOB[a:a + 1000]
    assert kept() == after_threads
    client.close()
    assert kept() == set()


def _kept(client) -> set[int]:
    """The connections a client keeps open for reuse (urllib3's pools)."""
    conns = set()
    for manager, _ in client._managers.values():
        for key in list(manager.pools.keys()):
            pool = manager.pools.get(key)
            for conn in list(pool.pool.queue) if pool is not None and pool.pool is not None else []:
                if conn is not None and conn.sock is not None:
                    conns.add(id(conn))
    return conns


class _Counting(http.server.BaseHTTPRequestHandler):
    """HTTP/1.1, silent, counting requests per path (or CONNECT target) on the server object."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _count(self) -> int:
        with self.server.lock:
            self.server.hits[self.path] = self.server.hits.get(self.path, 0) + 1
            return self.server.hits[self.path]


class _Scripted(_Counting):
    """Answers by path."""

    def _range(self) -> bytes:
        spec = self.headers.get("Range", "bytes=0-")[6:]
        a, b = spec.split("-")
        return BLOB[int(a):int(b) + 1 if b else None]

    def do_GET(self):
        n = self._count()
        body = self._range()
        if self.path == "/chunked":
            self.send_response(206)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(body), 7001):
                part = body[i:i + 7001]
                self.wfile.write(f"{len(part):x};ext=1\r\n".encode() + part + b"\r\n")
            self.wfile.write(b"0\r\nX-Trailer: yes\r\n\r\n")
        elif self.path == "/until-close":
            self.send_response(206)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True
        elif self.path.startswith("/moved"):
            self.send_response(302)
            self.send_header("Location", "/chunked" if self.path == "/moved" else "/moved")
            self.send_header("Content-Length", "5")
            self.end_headers()
            self.wfile.write(b"moved")
        elif self.path == "/busy-twice" and n <= 2:
            self.send_response(503)
            self.send_header("Retry-After", "0")
            self.send_header("Content-Length", "4")
            self.end_headers()
            self.wfile.write(b"busy")
        elif self.path == "/always-busy":
            self.send_response(503)
            self.send_header("Retry-After", "0")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.send_response(206)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            if self.path == "/hang-up":  # keeps no promise: closes without "Connection: close"
                self.close_connection = True


def _serve(handler, tls: ssl.SSLContext | None = None):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.hits, server.lock = {}, threading.Lock()
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture()
def scripted():
    server = _serve(_Scripted)
    yield server, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_chunked_close_delimited_and_redirected_bodies(scripted):
    server, base = scripted
    client = cphttp.Client()
    for path in ("/chunked", "/until-close", "/moved", "/moved-twice"):
        r = client.get(base + path, {"Range": "bytes=1000-60999"})
        assert (r.status, r.body) == (206, BLOB[1000:61000]), path
    assert server.hits["/moved"] == 2 and server.hits["/chunked"] == 3  # followed, relative Locations
    client.close()


def test_503_is_retried_after_retry_after_and_then_reported(scripted):
    server, base = scripted
    client = cphttp.Client()
    r = client.get(base + "/busy-twice", {"Range": "bytes=0-99"})
    assert (r.status, r.body, server.hits["/busy-twice"]) == (206, BLOB[:100], 3)
    with pytest.raises(cog.HttpError, match="always-busy: HTTP 503") as info:
        cog.get_range(base + "/always-busy", 0, 10)
    assert info.value.status == 503 and server.hits["/always-busy"] == cphttp.RETRIES + 1


class _CountingClient(cphttp.Client):
    """The real client, counting its attempts (each one a real request, or a try at one)."""

    def __init__(self):
        super().__init__()
        self.attempts = 0

    def _once(self, *args, **kwargs):
        self.attempts += 1
        return super()._once(*args, **kwargs)


def test_a_kept_alive_connection_closed_by_the_server_is_retried_at_once(scripted):
    server, base = scripted
    client = _CountingClient()
    for i in range(5):
        before = client.attempts
        r = client.get(base + "/hang-up", {"Range": f"bytes={i}-{i + 9}"})
        assert (r.status, r.body) == (206, BLOB[i:i + 10])
        # no back-off: at most one retry, and the first retry waits nothing (a stale connection is no failure)
        assert client.attempts - before <= 2
    assert cphttp._backoff(1) == 0.0
    assert server.hits["/hang-up"] == 5  # each request reached the server once


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1, made by openssl: (certificate file, server context)."""
    from conftest import self_signed_certificate

    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


def test_https_with_a_trusted_certificate_and_a_clear_failure_without(certificate, monkeypatch):
    cert, tls = certificate
    server = _serve(_Scripted, tls)
    url = f"https://127.0.0.1:{server.server_address[1]}/plain"
    for variable in ("SSL_CERT_FILE", "SSL_CERT_DIR", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(variable, raising=False)  # the system's certificates only
    try:
        client = _CountingClient()
        with pytest.raises(cphttp.TransportError, match="plain.*CERTIFICATE_VERIFY_FAILED"):
            client.get(url, {"Range": "bytes=0-9"})
        assert client.attempts == 1  # not retried: it would fail the same way
        for variable in ("SSL_CERT_FILE", "CURL_CA_BUNDLE"):  # how users trust a private CA
            with monkeypatch.context() as env:
                env.setenv(variable, str(cert))
                client = cphttp.Client()
                for i in range(3):
                    r = client.get(url, {"Range": f"bytes={i * 100}-{i * 100 + 4999}"})
                    assert (r.status, r.body) == (206, BLOB[i * 100:i * 100 + 5000])
                client.close()
        from osgeo import gdal  # GDAL users may set it as a configuration option instead

        gdal.SetConfigOption("CURL_CA_BUNDLE", str(cert))
        try:
            client = cphttp.Client()
            r = client.get(url, {"Range": "bytes=0-4999"})
            assert (r.status, r.body) == (206, BLOB[:5000])
            client.close()
        finally:
            gdal.SetConfigOption("CURL_CA_BUNDLE", None)
    finally:
        server.shutdown()
        server.server_close()


class _ForwardProxy(_Counting):
    """A forward proxy: GET with an absolute URL, fetched from the origin with the same Range."""

    def do_GET(self):
        self._count()
        request = urllib.request.Request(self.path, headers={"Range": self.headers["Range"]})
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request) as upstream:
            body = upstream.read()
            self.send_response(upstream.status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_a_proxy_named_by_the_environment_is_used(scripted, monkeypatch):
    origin, base = scripted
    proxy = _serve(_ForwardProxy)
    try:
        for name in ("no_proxy", "NO_PROXY", "http_proxy", "HTTP_PROXY"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{proxy.server_address[1]}")
        client = cphttp.Client()
        r = client.get(base + "/plain", {"Range": "bytes=10-19"})
        assert (r.status, r.body) == (206, BLOB[10:20])
        assert proxy.hits == {base + "/plain": 1} and origin.hits == {"/plain": 1}
        monkeypatch.setenv("no_proxy", "127.0.0.1")
        bypass = cphttp.Client().get(base + "/plain", {"Range": "bytes=0-9"})
        assert bypass.body == BLOB[:10] and proxy.hits[base + "/plain"] == 1 and origin.hits["/plain"] == 2
    finally:
        proxy.shutdown()
        proxy.server_close()


class _TunnelProxy(_Counting):
    """An HTTPS proxy: CONNECT opens a tunnel to the origin, bytes are relayed both ways."""

    def do_CONNECT(self):
        import select
        import socket

        self._count()
        host, port = self.path.rsplit(":", 1)
        upstream = socket.create_connection((host, int(port)))
        self.send_response(200, "Connection established")
        self.end_headers()
        ends = [self.connection, upstream]
        try:
            while True:
                readable, _, _ = select.select(ends, [], [], 10)
                if not readable:
                    return
                for end in readable:
                    data = end.recv(65536)
                    if not data:
                        return
                    (upstream if end is self.connection else self.connection).sendall(data)
        except ConnectionError:
            pass  # either side hung up: the tunnel ends, as a proxy's would
        finally:
            upstream.close()
            self.close_connection = True


def test_https_through_a_tunnelling_proxy_trusts_the_same_certificates(certificate, monkeypatch):
    cert, tls = certificate
    origin = _serve(_Scripted, tls)
    proxy = _serve(_TunnelProxy)
    target = f"127.0.0.1:{origin.server_address[1]}"
    try:
        for name in ("no_proxy", "NO_PROXY", "https_proxy", "HTTPS_PROXY", "SSL_CERT_FILE", "SSL_CERT_DIR",
                     "CURL_CA_BUNDLE"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{proxy.server_address[1]}")
        client = _CountingClient()
        with pytest.raises(cphttp.TransportError, match="CERTIFICATE_VERIFY_FAILED"):
            client.get(f"https://{target}/plain", {"Range": "bytes=0-9"})
        assert client.attempts == 1  # not retried
        monkeypatch.setenv("CURL_CA_BUNDLE", str(cert))  # trusted here as on a direct connection
        client = cphttp.Client()
        for i in range(3):
            r = client.get(f"https://{target}/plain", {"Range": f"bytes={i * 10}-{i * 10 + 9}"})
            assert (r.status, r.body) == (206, BLOB[i * 10:i * 10 + 10])
        client.close()
        assert proxy.hits[target] >= 2 and origin.hits["/plain"] == 3  # through the tunnel, not around it
        other_name = f"https://localhost:{origin.server_address[1]}/plain"  # not the certificate's name
        client = _CountingClient()
        with pytest.raises(cphttp.TransportError, match="(?i)hostname|match"):
            client.get(other_name, {"Range": "bytes=0-9"})
        assert client.attempts == 1 and origin.hits["/plain"] == 3  # refused at once, not retried
    finally:
        for server in (proxy, origin):
            server.shutdown()
            server.server_close()
