"""Real servers on loopback for the tests, the demo and the benchmarks.

* :class:`CogServer` — nginx serving a folder with HTTP Range support (static files), so
  every raster read goes over HTTP (core.cog or GDAL's ``/vsicurl/``) as it would against Earth
  Search; its access log records bytes sent per request.
* :class:`StacServer` — ``rustac serve`` (a real STAC API) over a collection and its items.
* :class:`LatencyProxy` — a TCP proxy in its own process adding latency per request (and
  optionally a shared link speed), for the benchmarks.

All listen on a free port of 127.0.0.1 only, and stop when stopped, when the ``with`` block
ends, or when the process that started them dies (Linux parent-death signal), so no server
outlives a test run.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    # PR_SET_PDEATHSIG = 1: the kernel sends SIGTERM to the server when its parent exits.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status < 500:
                    return
        except urllib.error.HTTPError as exc:  # it answers: 403/404 on "/" still means it is up
            if exc.code < 500:
                return
            last = exc
        except Exception as exc:  # not up yet
            last = exc
        time.sleep(0.1)
    proc.terminate()
    raise RuntimeError(f"server at {url} did not answer within {timeout:.0f} s ({last}); log: {log}")


class _Server:
    proc: subprocess.Popen | None = None

    def stop(self) -> None:
        """Stop the server (idempotent)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __del__(self):
        try:
            self.stop()
        except Exception:
            pass


def nginx_user_directive() -> str:
    """nginx's ``user`` line: the workers run as the user who started nginx.

    Started by root, nginx's master hands requests to workers running as ``nobody``, which cannot
    read a clone inside a 0700 folder (root's home, any private folder): every file answers 403.
    Naming the starting user keeps the workers able to read whatever the starter can, wherever the
    archive lies, without copying it elsewhere or loosening any folder's mode. It gives them
    nothing the starter does not already have, and the server listens on 127.0.0.1 only. Without
    root the master cannot switch user, the workers are the starter already, and the line would
    only earn a warning: it is left out.
    """
    if os.geteuid() != 0:
        return ""
    import grp
    import pwd

    return f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};"


def nginx_binary() -> str:
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and os.path.exists(candidate):
            return candidate
    raise RuntimeError("nginx is not installed (Debian package nginx-light); run 'make test' or 'make demo' to install it")


class CogServer(_Server):
    """nginx serving ``root`` on ``http://127.0.0.1:PORT/`` with Range requests (static files)."""

    def __init__(self, root: str | Path, port: int | None = None, workdir: str | Path | None = None):
        self.root = Path(root).resolve()
        self.port = port or free_port()
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="cloudprob-nginx-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.access_log = self.workdir / "access.log"
        self.error_log = self.workdir / "error.log"
        conf = self.workdir / "nginx.conf"
        temp = self.workdir / "temp"
        temp.mkdir(exist_ok=True)
        conf.write_text(
            f"""
{nginx_user_directive()}
worker_processes 1;
daemon off;
master_process on;
pid {self.workdir}/nginx.pid;
error_log {self.error_log} warn;
events {{ worker_connections 512; }}
http {{
    log_format bytes '$remote_addr "$request" $status $body_bytes_sent "$http_range"';
    access_log {self.access_log} bytes;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 10000;
    types {{ image/tiff tif tiff; application/json json; application/geo+json geojson; }}
    default_type application/octet-stream;
    server {{
        listen {HOST}:{self.port};
        root {self.root};
        location / {{ }}
    }}
}}
"""
        )
        log = self.workdir / "stdout.log"
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [nginx_binary(), "-c", str(conf), "-p", str(self.workdir), "-e", str(self.error_log)],
                stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
            )
        _wait_http(f"{self.url}/", self.proc, self.error_log)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def bytes_sent(self) -> int:
        """Body bytes sent so far, from the access log."""
        if not self.access_log.exists():
            return 0
        total = 0
        for line in self.access_log.read_text().splitlines():
            parts = line.split('" ')
            if len(parts) >= 2:
                fields = parts[1].split()
                if len(fields) >= 2 and fields[1].isdigit():
                    total += int(fields[1])
        return total

    def requests(self) -> int:
        """Requests answered so far."""
        return len(self.access_log.read_text().splitlines()) if self.access_log.exists() else 0


class StacServer(_Server):
    """``rustac serve`` over the given collection and item files on ``http://127.0.0.1:PORT``."""

    def __init__(self, *hrefs: str | Path, port: int | None = None, workdir: str | Path | None = None):
        self.port = port or free_port()
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="cloudprob-rustac-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        exe = shutil.which("rustac") or str(Path(os.sys.executable).parent / "rustac")
        if not os.path.exists(exe):
            raise RuntimeError("rustac is not installed (pip package rustac); run 'make test' or 'make demo'")
        log = self.workdir / "rustac.log"
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [exe, "serve", "--addr", f"{HOST}:{self.port}", *map(str, hrefs)],
                stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
            )
        _wait_http(f"{self.url}/", self.proc, log)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"


class SampleServers:
    """A sample archive served for real: nginx for the COGs, rustac for the STAC API."""

    def __init__(self, archive: str | Path, workdir: str | Path | None = None):
        self.archive = Path(archive)
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="cloudprob-servers-"))
        self.cogs = CogServer(self.archive, workdir=self.workdir / "nginx")
        try:
            items = write_items_for(self.archive, self.cogs.url, self.workdir / "served_items.json")
            self.stac = StacServer(self.archive / "items" / "collection.json", items, workdir=self.workdir / "rustac")
        except BaseException:
            self.cogs.stop()
            raise

    def stop(self) -> None:
        self.stac.stop()
        self.cogs.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def write_items_for(archive: Path, base_url: str, out: Path) -> Path:
    """The archive's items with asset hrefs made absolute under ``base_url``.

    The sample archive stores hrefs relative to its folder, so one archive can be served from
    any port; this writes the copy the STAC API server loads.
    """
    import json

    data = json.loads((archive / "items" / "items.json").read_text())
    base = base_url.rstrip("/")
    for item in data["features"]:
        for asset in item["assets"].values():
            if "://" not in asset["href"]:
                asset["href"] = f"{base}/{asset['href']}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data))
    return out


class LatencyProxy(_Server):
    """A TCP proxy on 127.0.0.1 that holds every client request ``latency_ms`` before passing
    it to ``upstream_port``: an HTTP server as far away as a cloud bucket, on loopback. With
    ``bandwidth_mbps`` the responses of all connections share one link of that speed (a
    laptop's connection), in 64 KiB slices served in turn.

    HTTP/1.1 clients send one request at a time per connection, so delaying each chunk from the
    client delays each request once. It runs in its own process, as a remote server would: in
    the measured process its event loop would compete for the GIL with the code measured, and
    its timers would slip as that code gets busier. Stops with the ``with`` block or when the
    process that started it dies.
    """

    def __init__(self, upstream_port: int, latency_ms: float, port: int | None = None, bandwidth_mbps: float = 0.0):
        import sys

        self.upstream_port = upstream_port
        self.latency_ms = latency_ms
        self.bandwidth_mbps = bandwidth_mbps
        self.port = port or free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-S", __file__, "latency-proxy", str(upstream_port), str(latency_ms), str(self.port),
             str(bandwidth_mbps)],
            stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"latency proxy exited with {self.proc.returncode}")
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("latency proxy did not start")

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"


def _run_latency_proxy(upstream_port: int, latency_ms: float, port: int, bandwidth_mbps: float = 0.0) -> None:
    import asyncio

    latency = latency_ms / 1000.0
    bytes_per_s = bandwidth_mbps * 1e6 / 8.0
    link = {"free_at": 0.0}  # when the shared link has sent everything queued so far

    async def through_link(size: int) -> None:
        if bytes_per_s <= 0:
            return
        loop = asyncio.get_running_loop()
        start = max(loop.time(), link["free_at"])
        link["free_at"] = start + size / bytes_per_s
        await asyncio.sleep(link["free_at"] - loop.time())

    async def handle(reader, writer) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(HOST, upstream_port)
        except OSError:
            writer.close()
            return

        async def client_to_server() -> None:
            try:
                while True:
                    data = await reader.read(65536)
                    if not data:
                        break
                    await asyncio.sleep(latency)
                    up_writer.write(data)
                    await up_writer.drain()
            finally:
                up_writer.close()

        async def server_to_client() -> None:
            try:
                while True:
                    data = await up_reader.read(65536 if bytes_per_s > 0 else 1 << 20)
                    if not data:
                        break
                    await through_link(len(data))
                    writer.write(data)
                    await writer.drain()
            finally:
                writer.close()

        await asyncio.gather(client_to_server(), server_to_client(), return_exceptions=True)

    async def main() -> None:
        server = await asyncio.start_server(handle, HOST, port, backlog=1024)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


if __name__ == "__main__":
    import sys

    if len(sys.argv) in (5, 6) and sys.argv[1] == "latency-proxy":
        _run_latency_proxy(int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), float((sys.argv + ["0"])[5]))
    else:
        sys.exit("usage: servers.py latency-proxy UPSTREAM_PORT LATENCY_MS PORT [BANDWIDTH_MBPS]")
