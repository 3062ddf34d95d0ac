"""Ranged GETs: core.http (urllib3 with a deadline per request, Cancel, byte limits and checked
places) against a bare urllib3 request, one at a time on a kept-alive connection to nginx on
loopback: what core.http's checks cost per request.

Both sides fetch the same 16 KiB headers of the full-size sample's SCL COGs; best of 3 rounds.
(Until issue 14, core.http was a bare HTTP/1.1 client of its own: 0.08 ms per request against
urllib3's 0.17–0.18 ms here, a gain that did not show over TLS with 50 ms per request, see
bench_reader.py.)
"""
from __future__ import annotations

import time

from common import BUILD, ensure_plugin_importable, report, table

ensure_plugin_importable()

import servers  # noqa: E402
from bench_screening import full_archive  # noqa: E402
from cloud_probability.core import http as cphttp  # noqa: E402

FILES = 50
REQUESTS_PER_FILE = 8
ROUNDS = 3
RANGE = {"Range": "bytes=0-16383"}


def main() -> dict:
    import urllib3

    archive = full_archive()
    files = sorted(archive.rglob("SCL.tif"))[:FILES]
    with servers.CogServer(archive, workdir=BUILD / "bench" / "nginx-http") as cogs:
        urls = [f"{cogs.url}/{f.relative_to(archive)}" for f in files] * REQUESTS_PER_FILE
        ours, peer = cphttp.Client(), urllib3.PoolManager(maxsize=4)
        best = {"core.http": float("inf"), "urllib3": float("inf")}
        for _ in range(ROUNDS):
            t0 = time.perf_counter()
            for url in urls:
                assert len(peer.request("GET", url, headers=RANGE).data) == 16384
            best["urllib3"] = min(best["urllib3"], (time.perf_counter() - t0) / len(urls))
            t0 = time.perf_counter()
            for url in urls:
                assert len(ours.get(url, RANGE, limit=16384).body) == 16384
            best["core.http"] = min(best["core.http"], (time.perf_counter() - t0) / len(urls))
        ours.close()
        peer.clear()
    ratio = best["urllib3"] / best["core.http"]
    print(f"Ranged GETs of 16 KiB, {len(urls)} per round, one at a time on a kept-alive loopback connection to nginx "
          f"(best of {ROUNDS} rounds; the time includes nginx's)")
    print(table(["client", "ms per request", "requests/s"], [
        [name, f"{s * 1e3:.3f}", f"{1 / s:,.0f}"] for name, s in best.items()]))
    print(f"  core.http: {1 / ratio:.2f}× the time per request of a bare urllib3 request")
    report("http", {"seconds_per_request": best, "ratio": ratio})
    return best


if __name__ == "__main__":
    main()
