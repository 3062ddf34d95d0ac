"""The native COG reader (core.cog over core.http) against GDAL's /vsicurl/ tuned as GDAL's
documentation advises, over TLS with 50 ms added per request and a shared 100 Mbit/s link
(issue 14, "Build"): does the native reader earn its place?

Set-up, all on loopback and in processes of their own:

* nginx with TLS (an openssl-made certificate for 127.0.0.1, trusted through
  ``CURL_CA_BUNDLE`` by both sides) and HTTP/2 offered by ALPN, over the full-size sample's
  5490² SCL COGs;
* a TCP proxy in front of it that delays every chunk the client sends by 50 ms, chunks in
  flight at once overlapping (pipelined: an HTTP/2 connection carrying many requests pays the
  delay once per chunk, not once per request in turn), and sends the answers of all
  connections through one 100 Mbit/s link.

The same screening (``core.screening.screen_scenes``: 113 products, 28 acquisitions, an area
of 5 km and of 20 km around Greenwich) runs at the default concurrency (32) with every read
(a) native over core.http, (b) native over a bare urllib3 request (what core.http's deadline,
limits and checks cost), (c) through GDAL with variants of the tuned options. (Before core.http
was built on urllib3, (a) was its own HTTP/1.1 client: 0.47 s against urllib3's 0.47 s here.) Each is the best of REPEATS cold runs
(GDAL's /vsicurl/ cache and our header cache cleared; connections kept, as in a session).
Requests and bytes come from nginx's access log.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

def _run_proxy(upstream_port: int, latency_ms: float, port: int, bandwidth_mbps: float) -> None:
    """Every chunk from a client reaches the server ``latency_ms`` after it arrived (chunks in
    flight overlap, order kept); the servers' answers share one link of ``bandwidth_mbps``."""
    import asyncio

    latency = latency_ms / 1000.0
    rate = bandwidth_mbps * 1e6 / 8.0
    link = {"free_at": 0.0}

    async def handle(reader, writer):
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
        except OSError:
            writer.close()
            return
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        async def receive():
            while True:
                data = await reader.read(65536)
                await queue.put((loop.time() + latency, data))
                if not data:
                    return

        async def forward():
            try:
                while True:
                    due, data = await queue.get()
                    if not data:
                        break
                    await asyncio.sleep(max(0.0, due - loop.time()))
                    up_writer.write(data)
                    await up_writer.drain()
            finally:
                up_writer.close()

        async def answer():
            try:
                while True:
                    data = await up_reader.read(65536)
                    if not data:
                        break
                    if rate > 0:
                        start = max(loop.time(), link["free_at"])
                        link["free_at"] = start + len(data) / rate
                        await asyncio.sleep(link["free_at"] - loop.time())
                    writer.write(data)
                    await writer.drain()
            finally:
                writer.close()

        await asyncio.gather(receive(), forward(), answer(), return_exceptions=True)

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
        async with server:
            await server.serve_forever()

    asyncio.run(main())



if __name__ == "__main__" and len(sys.argv) == 6 and sys.argv[1] == "proxy":
    _run_proxy(int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))
    sys.exit(0)

from common import BUILD, ensure_plugin_importable, report, table

ensure_plugin_importable()

import servers  # noqa: E402
from bench_screening import full_archive, scenes_for  # noqa: E402
from cloud_probability.core import http as cphttp  # noqa: E402
from cloud_probability.core import reading  # noqa: E402
from cloud_probability.core.masks import PRESETS  # noqa: E402
from cloud_probability.core.screening import screen_scenes  # noqa: E402

LATENCY_MS = 50.0
LINK_MBPS = 100.0
CONCURRENCY = 32  # screenscenes' default
REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))
AREAS_KM = (5.0, 20.0)

# What GDAL's documentation advises for cloud-optimised GeoTIFFs over HTTP
# (gdal.org/user/configoptions.html, /vsicurl/ in gdal.org/user/virtual_file_systems.html)
GDAL_TUNED = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.TIF,.tiff",
    "GDAL_INGESTED_BYTES_AT_OPEN": "16384",  # the header in the first GET, as the native reader does
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_HTTP_MULTIPLEX": "YES",
    "GDAL_HTTP_MULTIRANGE": "YES",  # a window's ranges in parallel (HTTP/2 streams of one connection)
    "VSI_CACHE": "TRUE",
    "CPL_VSIL_CURL_CACHE_SIZE": str(64 * 1024 * 1024),
    "GDAL_CACHEMAX": 256 * 1024 * 1024,
    "CPL_VSIL_NETWORK_STATS_ENABLED": "YES",
}
GDAL_VARIANTS = [
    ("GDAL, HTTP/2", {"GDAL_HTTP_VERSION": "2TLS"}),
    ("GDAL, HTTP/1.1", {"GDAL_HTTP_VERSION": "1.1"}),
    ("GDAL, HTTP/2, SINGLE_GET", {"GDAL_HTTP_VERSION": "2TLS", "GDAL_HTTP_MULTIRANGE": "SINGLE_GET"}),
    # HEAD avoided: GDAL 3.6 then opens with a GET without Range, and nginx sends the whole file
    ("GDAL, HTTP/2, no HEAD", {"GDAL_HTTP_VERSION": "2TLS", "CPL_VSIL_CURL_USE_HEAD": "NO"}),
]


class TlsNginx(servers._Server):
    """nginx serving ``root`` over TLS (HTTP/1.1 and HTTP/2 by ALPN) on 127.0.0.1."""

    def __init__(self, root: Path, workdir: Path, cert: Path, key: Path):
        self.port = servers.free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        self.access_log = workdir / "access.log"
        self.access_log.unlink(missing_ok=True)
        temp = workdir / "temp"
        temp.mkdir(exist_ok=True)
        conf = workdir / "nginx.conf"
        conf.write_text(f"""
{servers.nginx_user_directive()}
worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    log_format bytes '$remote_addr "$request" $status $body_bytes_sent "$http_range" $server_protocol';
    access_log {self.access_log} bytes;
    client_body_temp_path {temp}/body; proxy_temp_path {temp}/proxy; fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi; scgi_temp_path {temp}/scgi;
    sendfile on;
    keepalive_requests 100000;
    keepalive_timeout 300s;
    types {{ image/tiff tif tiff; }}
    server {{
        listen 127.0.0.1:{self.port} ssl http2;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_session_cache shared:tls:10m;
        root {root};
        location / {{ }}
    }}
}}
""")
        self.proc = subprocess.Popen([servers.nginx_binary(), "-c", str(conf), "-p", str(workdir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                     preexec_fn=servers._die_with_parent)
        deadline = time.monotonic() + 10
        while True:
            try:
                import socket

                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"nginx did not start: {(workdir / 'error.log').read_text()[-2000:]}")
                time.sleep(0.05)

    def counts(self) -> tuple[int, int, dict]:
        """(requests, body bytes, requests per protocol) so far."""
        n = total = 0
        protocols: dict = {}
        if self.access_log.exists():
            for line in self.access_log.read_text().splitlines():
                parts = line.split('" ')
                fields = parts[1].split() if len(parts) >= 2 else []
                if len(fields) >= 2 and fields[1].isdigit():
                    n += 1
                    total += int(fields[1])
                    protocols[line.rsplit(" ", 1)[-1]] = protocols.get(line.rsplit(" ", 1)[-1], 0) + 1
        return n, total, protocols


class PipelinedDelay(servers._Server):
    """The latency/link proxy of this benchmark (its own process; see _run_proxy)."""

    def __init__(self, upstream_port: int, latency_ms: float, bandwidth_mbps: float):
        self.port = servers.free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-S", __file__, "proxy", str(upstream_port), str(latency_ms), str(self.port),
             str(bandwidth_mbps)], stdin=subprocess.DEVNULL, preexec_fn=servers._die_with_parent)
        import socket

        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("proxy did not start")
                time.sleep(0.05)


def certificate(folder: Path) -> tuple[Path, Path]:
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run([shutil.which("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def _plain_urllib3_get():
    """core.http.get as a bare urllib3 request (one PoolManager, keep-alive, the same
    certificates), without core.http's deadline, limits and checks: what they cost."""
    import urllib3

    manager = urllib3.PoolManager(maxsize=128, block=False, retries=False,
                                  ssl_context=cphttp._tls_context(cphttp._ca_bundle()),
                                  timeout=urllib3.Timeout(connect=10, read=60))

    def get(url, headers, **kwargs):
        r = manager.request("GET", url, headers=headers, redirect=False, retries=False)
        return cphttp.Response(r.status, r.reason or "", {k.lower(): v for k, v in r.headers.items()}, r.data, url)

    return get


def run_once(scenes, area, side: str, options: dict | None) -> dict:
    reading.clear_http_cache()
    reading.clear_lookups()
    saved_options, saved_get = dict(reading.GDAL_HTTP_OPTIONS), cphttp.get
    os.environ["CLOUDPROB_NATIVE_COG"] = "NO" if options is not None else "YES"
    if options is not None:
        reading.GDAL_HTTP_OPTIONS.clear()
        reading.GDAL_HTTP_OPTIONS.update(options)
    if side == "native over bare urllib3":
        cphttp.get = _URLLIB3_GET
    try:
        t0 = time.monotonic()
        result = screen_scenes(scenes, area, 27700, PRESETS["scl"], concurrency=CONCURRENCY)
        seconds = time.monotonic() - t0
    finally:
        cphttp.get = saved_get
        reading.GDAL_HTTP_OPTIONS.clear()
        reading.GDAL_HTTP_OPTIONS.update(saved_options)
        os.environ.pop("CLOUDPROB_NATIVE_COG", None)
    assert result.errors == 0, [o.error for o in result.observations if o.error][:3]
    return {"seconds": seconds, "cloud": [o.cloud_pct for o in result.observations]}


_URLLIB3_GET = None


def main() -> dict:
    archive = full_archive()
    work = Path(tempfile.mkdtemp(prefix="bench-reader-", dir=BUILD))
    try:
        return _main(archive, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _main(archive: Path, work: Path) -> dict:
    global _URLLIB3_GET
    from cloud_probability.sampledata import sample_archive as sa
    from shapely.geometry import box

    gx, gy = sa.GREENWICH_27700
    cert, key = certificate(work)
    # both sides trust it: core.http through CURL_CA_BUNDLE, GDAL 3.6 through SSL_CERT_FILE (it looks
    # there before CURL_CA_BUNDLE, and this machine's environment names the system bundle there)
    os.environ["CURL_CA_BUNDLE"] = os.environ["SSL_CERT_FILE"] = str(cert)
    _URLLIB3_GET = _plain_urllib3_get()
    from osgeo import gdal

    gdal.SetConfigOption("CURL_CA_BUNDLE", str(cert))
    sides = [("native (core.http on urllib3)", None), ("native over bare urllib3", None)] + [
        (label, {**GDAL_TUNED, **extra, "CURL_CA_BUNDLE": str(cert)}) for label, extra in GDAL_VARIANTS]
    only = os.environ.get("BENCH_SIDES")
    if only:
        sides = [s for s in sides if s[0] in only.split(";")]
    results = []
    with TlsNginx(archive, work / "nginx", cert, key) as nginx, \
            PipelinedDelay(nginx.port, LATENCY_MS, LINK_MBPS) as proxy:
        base = f"https://127.0.0.1:{proxy.port}"
        for km in AREAS_KM:
            half = km * 500.0
            area = box(gx - half, gy - half, gx + half, gy + half)
            scenes = [s for s in scenes_for(archive, base, area, 27700)]
            reference = None
            best: dict = {}
            for _ in range(REPEATS):
                for label, options in sides:
                    r0, b0, p0 = nginx.counts()
                    run = run_once(scenes, area, label, options)
                    r1, b1, p1 = nginx.counts()
                    run.update(requests=r1 - r0, bytes=b1 - b0,
                               protocols={k: v - p0.get(k, 0) for k, v in p1.items() if v - p0.get(k, 0)})
                    if reference is None:
                        reference = run["cloud"]
                    assert run["cloud"] == reference, f"{label} gave other figures"
                    if label not in best or run["seconds"] < best[label]["seconds"]:
                        best[label] = run
            native = best["native (core.http on urllib3)"]["seconds"]
            for label, _ in sides:
                b = best[label]
                results.append({"area_km": km, "side": label, "scenes": len(scenes), "seconds": b["seconds"],
                                "requests": b["requests"], "bytes": b["bytes"], "protocols": b["protocols"],
                                "vs_native": b["seconds"] / native})
    rows = [[f"{r['area_km']:g} km", r["side"], f"{r['seconds']:.2f} s", f"{r['vs_native']:.2f}×",
             str(r["requests"]), f"{r['bytes'] / 1e6:.2f} MB", ", ".join(f"{k} {v}" for k, v in r["protocols"].items())]
            for r in results]
    print(f"Screening {results[0]['scenes']} products (5490² SCL COGs) over TLS, +{LATENCY_MS:g} ms per request, "
          f"{LINK_MBPS:g} Mbit/s shared link, {CONCURRENCY} at once (the default); best of {REPEATS} cold runs")
    print(table(["area", "reader", "time", "vs native", "requests", "bytes", "protocol"], rows))
    report("reader", results)
    return {"results": results}


if __name__ == "__main__":
    main()
