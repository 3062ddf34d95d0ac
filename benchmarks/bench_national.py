"""`make bench-national`: the reference chain over a synthetic UK-like year, through ``core``.

The year (benchmarks/national_archive.py): 76 MGRS-like 5490² tiles in UTM 29/30/31 over a
crude UK land mask (sea = SCL no data), two satellites on seven overlapping relative orbits,
~13,700 Collection-1 items (``scl`` + ``cloud``), ~47,000 Voronoi small areas. Its COGs are
served by nginx on 127.0.0.1 with Range support (scripts/servers.py CogServer), so every read
goes over HTTP as against Earth Search.

The chain is the shipped model's (cloudprob:annualcloudprobability), called through core as a
cluster node would: ``cloud_frequency`` (mean of ``cloud`` over SCL-valid observations, with
the probability, valid, cloudy and stdev rasters; 2048-px tiles; 4 acquisitions in flight, the
Processing default) → ``reference_adjustment`` (21×21, 5 %) → ``zonal_statistics`` (adjusted
probability, counts and spread, in process). Each stage runs in its own child process, so its
peak RSS (VmHWM) and CPU time are its own; bytes are core's count (``network_bytes``) and
nginx's access log (requests). ``--fraction`` (1/16, 1/4, 1; 1/64 and 1/256 for development)
takes a sub-extent of that share of the area, centred on the extent's centre, with the items,
grid and zones clipped to it. Without ``--fraction``: 1/16, 1/4 and 1 in turn.

Figures are printed and merged into bench_out/bench_national.json (one entry per fraction).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BUILD, OUT, ensure_plugin_importable, table  # noqa: E402
from peak_memory import peak_rss_mb  # noqa: E402

NATIONAL = BUILD / "national"
LINK_BYTES_PER_S = 100e6 / 8  # 100 Mbit/s = 12.5 MB/s
CONCURRENCY = 4  # cloudprob:cloudfrequency's default (about 2 × CPU cores)
TILE_PX = 2048
STAGES = ("frequency", "adjustment", "published", "zonal")
# "published": the 2024 release's adjustment (core.smoothing.published_adjustment, METHOD=2) on the same
# counts, timed beside the documented one and left out of the chain's total (a run makes one or the other)
CHAIN = ("frequency", "adjustment", "zonal")
# the reference pipeline (the product's published run)
REFERENCE = {"cpus": 72, "memory_gb": 400, "limit_h": 12.5, "tile_km": 20, "tile_scenes": 713, "tile_minutes": 29}
GOALS = {"peak_rss_mb": 4096, "compute_min": 60, "projected_100mbit_h": 2}


# ------------------------------------------------------------------------------------------
# the child side: one stage, its own process


class _LogProgress:
    """Progress to stderr every 60 s: percent, elapsed, resident memory now and at peak. A
    thread samples the resident memory every second with the percent reached, so a peak can
    be placed in the stage (tiles being counted, or the outputs being written at 95–100 %)."""

    def __init__(self, stage: str):
        import threading

        self.stage, self.t0, self.last, self.percent = stage, time.monotonic(), 0.0, 0.0
        self.timeline: list[tuple[float, float, float]] = []  # (seconds, percent, RSS MB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(1.0):
            self.timeline.append((round(time.monotonic() - self.t0, 1), round(self.percent, 2), round(_rss_mb())))

    def stop(self) -> dict:
        """The timeline's summary: RSS while counting tiles (< 95 %) and while writing the outputs."""
        self._stop.set()
        self._thread.join()
        counting = [r for _, p, r in self.timeline if p < 95.0] or [0]
        writing = [r for _, p, r in self.timeline if p >= 95.0] or [0]
        step = max(1, len(self.timeline) // 400)
        return {"rss_counting_median_mb": sorted(counting)[len(counting) // 2], "rss_counting_max_mb": max(counting),
                "rss_writing_max_mb": max(writing), "timeline": self.timeline[::step]}

    def set_progress(self, percent: float) -> None:
        self.percent = percent
        now = time.monotonic()
        if now - self.last >= 60:
            self.last = now
            print(f"    [{self.stage}] {percent:5.1f} % after {now - self.t0:6.0f} s, RSS {_rss_mb():.0f} MB "
                  f"(peak {peak_rss_mb():.0f} MB)", file=sys.stderr, flush=True)

    def is_canceled(self) -> bool:
        return False

    def info(self, message: str) -> None:
        print(f"    [{self.stage}] {message}", file=sys.stderr, flush=True)

    warning = info


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _probe_finished_unconsumed() -> dict | None:
    """Count, each time core.frequency takes a finished acquisition from its thread pool, how
    many others have finished and wait for the tile's thread to add them (each holds its
    arrays, ~20 MB for a 2048² tile): memory in flight beyond ``concurrency``. Wraps
    ``as_completed`` as core.frequency sees it; nothing else changes. None if core is laid out
    otherwise."""
    import concurrent.futures as cf
    import types

    try:
        from cloud_probability.core import frequency
    except ImportError:
        return None
    if getattr(frequency, "cf", None) is not cf:
        return None
    probe = {"max": 0, "sum": 0, "yields": 0}
    real = cf.as_completed

    def as_completed(fs, timeout=None):
        for future in real(fs, timeout):
            waiting = sum(1 for f in list(fs) if f.done()) - 1  # finished ones still in the dict, this one aside
            probe["max"] = max(probe["max"], waiting)
            probe["sum"] += waiting
            probe["yields"] += 1
            yield future

    shim = types.SimpleNamespace(**{name: getattr(cf, name) for name in
                                    ("ThreadPoolExecutor", "ProcessPoolExecutor", "wait", "Future", "FIRST_COMPLETED",
                                     "ALL_COMPLETED", "TimeoutError", "CancelledError")})
    shim.as_completed = as_completed
    frequency.cf = shim
    return probe


def child(stage: str, config_path: str) -> None:
    ensure_plugin_importable()
    import national_archive as na

    na.allow_loopback_assets()
    cfg = json.loads(Path(config_path).read_text())
    out = Path(cfg["out"])
    paths = {k: str(out / f"{k}.tif") for k in ("probability", "valid", "cloudy", "stdev", "smoothed", "adjusted")}
    progress = _LogProgress(stage)
    result: dict = {}
    if stage == "frequency":
        probe = _probe_finished_unconsumed()
        from cloud_probability.core.frequency import cloud_frequency, grid_for_area
        from cloud_probability.core.masks import PRESETS
        from cloud_probability.core.stac import normalise_item

        t0, c0 = time.monotonic(), _cpu_s()
        with open(cfg["items"]) as fh:  # one item per line, as a layer's features are read
            scenes = [normalise_item(json.loads(line)) for line in fh]
        result["load_seconds"] = time.monotonic() - t0
        result["load_cpu_seconds"] = _cpu_s() - c0
        result["rss_after_load_mb"] = _rss_mb()
        grid = grid_for_area(tuple(cfg["extent"]), "EPSG:27700", 20.0)
        t0, c0 = time.monotonic(), _cpu_s()
        r = cloud_frequency(
            scenes, grid, PRESETS["scl"],
            {k: paths[k] for k in ("probability", "valid", "cloudy", "stdev")},
            measure="mean_probability", probability_asset="cloud", tile_px=cfg["tile_px"],
            concurrency=cfg["concurrency"], cache_dir=cfg["cache"], progress=progress,
        )
        if r.unreadable:  # every product of the year is served: a left-out one is a fault of the run
            raise SystemExit(f"{len(r.unreadable)} acquisitions unreadable, e.g. {next(iter(r.unreadable.values()))}")
        result.update(seconds=time.monotonic() - t0, cpu_seconds=_cpu_s() - c0, bytes=r.bytes_fetched,
                      pixel_observations=r.pixel_observations, acquisitions=r.acquisitions, scenes=r.scenes,
                      tiles=r.tiles, unreadable=len(r.unreadable), grid_shape=list(grid.shape), stats=r.stats)
        if probe and probe["yields"]:
            result["finished_unconsumed"] = {"max": probe["max"], "mean": probe["sum"] / probe["yields"]}
    elif stage == "adjustment":
        from cloud_probability.core.reading import network_bytes, network_bytes_reset
        from cloud_probability.core.smoothing import reference_adjustment

        network_bytes_reset()
        t0, c0 = time.monotonic(), _cpu_s()
        r = reference_adjustment(paths["cloudy"], paths["valid"], paths["smoothed"], paths["adjusted"], size=21,
                                 threshold_pct=5.0, progress=progress)
        result.update(seconds=time.monotonic() - t0, cpu_seconds=_cpu_s() - c0, bytes=network_bytes(),
                      fit={k: getattr(r, k) for k in ("intercept", "slope", "median_deviation_pct", "r2", "pixels",
                                                      "shifted", "mean_before", "mean_after")})
    elif stage == "published":
        from cloud_probability.core.smoothing import published_adjustment

        t0, c0 = time.monotonic(), _cpu_s()
        r = published_adjustment(paths["cloudy"], paths["valid"], str(out / "published_lag.tif"),
                                 str(out / "published_adjusted.tif"), str(out / "published_adjusted_count.tif"),
                                 size=21, threshold_pct=5.0, progress=progress)
        result.update(seconds=time.monotonic() - t0, cpu_seconds=_cpu_s() - c0, bytes=0,
                      fit={k: getattr(r, k) for k in ("intercept", "slope", "median_deviation_pct", "r2", "pixels",
                                                      "shifted", "rows_left_out", "pixels_without_observation")})
    elif stage == "zonal":
        import geopandas as gpd

        from cloud_probability.core.reading import network_bytes, network_bytes_reset
        from cloud_probability.core.zonal import zonal_statistics

        network_bytes_reset()
        t0, c0 = time.monotonic(), _cpu_s()
        zones = gpd.read_file(cfg["zones"], layer="zones")
        result["read_zones_seconds"] = time.monotonic() - t0
        r = zonal_statistics(paths["adjusted"], zones, "code", valid_path=paths["valid"], progress=progress,
                             spread_path=paths["stdev"])
        result.update(seconds=time.monotonic() - t0, cpu_seconds=_cpu_s() - c0, bytes=network_bytes())
        r.table.to_csv(out / "zonal.csv", index=False)
        t = r.table
        result.update(zones=int(len(t)), zones_with_data=int(t["probability_mean"].notna().sum()),
                      mean_of_area_means=float(t["probability_mean"].mean()), invalid=len(r.invalid),
                      no_data=len(r.no_data))
    else:
        raise SystemExit(f"unknown stage {stage}")
    result["peak_rss_mb"] = peak_rss_mb()
    result["memory"] = progress.stop()
    result["process_cpu_seconds"] = _cpu_s()
    print(json.dumps(result, default=str), flush=True)


# ------------------------------------------------------------------------------------------
# the parent side


class AccessLog:
    """Requests and body bytes in nginx's access log, read incrementally."""

    def __init__(self, path: Path):
        self.path, self.offset = path, 0
        self.requests = self.headers = self.bytes = 0

    def update(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        for line in data[:end].splitlines():
            self.requests += 1
            parts = line.split(b'" ')
            if len(parts) >= 2:
                fields = parts[1].split()
                if len(fields) >= 2 and fields[1].isdigit():
                    self.bytes += int(fields[1])
            if b'"bytes=0-' in line:
                self.headers += 1  # a file's first bytes: its header (IFDs, tile index)


def _nginx_cpu_s(master_pid: int) -> float:
    """CPU seconds of nginx's master and workers (the server's side of loopback)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # fields[1] is the parent's pid; utime and stime are fields 14 and 15 of stat
        if int(entry.name) == master_pid or int(fields[1]) == master_pid:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _parse_fraction(text: str) -> float:
    return float(Fraction(text))


def _fmt_s(s: float) -> str:
    return f"{s:,.0f} s" if s >= 100 else f"{s:.1f} s"


def _fmt_mb(b: float) -> str:
    return f"{b / 1e9:,.2f} GB" if b >= 1e9 else f"{b / 1e6:,.1f} MB"


def run_fraction(fraction: float, concurrency: int, keep: bool) -> dict:
    ensure_plugin_importable()
    import national_archive as na
    import servers

    label = na.fraction_label(fraction)
    print(f"== fraction {label}", flush=True)
    t0 = time.monotonic()
    meta = na.prepare(fraction, NATIONAL, workers=2)
    prepare_s = time.monotonic() - t0
    run = NATIONAL / f"run-{label.replace('/', '-')}"
    if run.exists():
        shutil.rmtree(run)
    out = run / "out"
    out.mkdir(parents=True)
    cache = run / "cache"
    results: dict = {}
    with servers.CogServer(meta["root"], workdir=run / "nginx") as cogs:
        items = run / "items.ndjson"
        base = cogs.url
        with open(meta["items_path"]) as src, open(items, "w") as dst:
            for line in src:
                item = json.loads(line)
                for key in ("scl", "cloud"):
                    item["assets"][key]["href"] = f"{base}/{item['assets'][key]['href']}"
                dst.write(json.dumps(item, separators=(",", ":")) + "\n")
        config = run / "config.json"
        config.write_text(json.dumps({
            "items": str(items), "extent": meta["extent_27700"], "out": str(out), "cache": str(cache),
            "zones": meta["zones_path"], "concurrency": concurrency, "tile_px": TILE_PX,
        }))
        log = AccessLog(cogs.access_log)
        for stage in STAGES:
            log.update()
            before = (log.requests, log.headers, log.bytes)
            server_cpu0 = _nginx_cpu_s(cogs.proc.pid)
            children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            print(f"  {stage} …", flush=True)
            load0 = os.getloadavg()[0]
            s0 = time.monotonic()
            done = subprocess.run([sys.executable, __file__, "--child", stage, str(config)], stdout=subprocess.PIPE,
                                  text=True)
            wall = time.monotonic() - s0
            if done.returncode:
                raise RuntimeError(f"stage {stage} failed (exit {done.returncode}); see the log above")
            r = json.loads(done.stdout.strip().splitlines()[-1])
            children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            log.update()
            r["process_wall_seconds"] = wall
            r["load_average_1min"] = [load0, os.getloadavg()[0]]  # the machine is shared: others' work shows here
            r["process_cpu_seconds_parent_view"] = (children1.ru_utime + children1.ru_stime) - (
                children0.ru_utime + children0.ru_stime)
            r["requests"] = log.requests - before[0]
            r["header_requests"] = log.headers - before[1]
            r["nginx_bytes"] = log.bytes - before[2]
            r["server_cpu_seconds"] = _nginx_cpu_s(cogs.proc.pid) - server_cpu0
            results[stage] = r
            print(f"    {_fmt_s(r['seconds'])}, CPU {_fmt_s(r['cpu_seconds'])}, peak RSS {r['peak_rss_mb']:.0f} MB, "
                  f"{_fmt_mb(r['bytes'])} fetched, {r['requests']:,} requests", flush=True)
    obs = results["frequency"]["pixel_observations"]
    grid_px = meta["grid_shape"][0] * meta["grid_shape"][1]
    for stage, r in results.items():
        r["transfer_100mbit_seconds"] = r["bytes"] / LINK_BYTES_PER_S
        r["projected_100mbit_seconds"] = max(r["seconds"], r["transfer_100mbit_seconds"])
        r["mpx_obs_per_s"] = obs / 1e6 / r["seconds"]
        r["mpx_per_s"] = grid_px / 1e6 / r["seconds"]
    head = subprocess.run(["git", "-C", str(BUILD.parent), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(BUILD.parent), "status", "--porcelain", "core"], capture_output=True,
                           text=True).stdout.strip()
    entry = {"fraction": fraction, "label": label, "selection": meta, "prepare_seconds": prepare_s,
             "commit": head + ("+uncommitted core changes" if dirty else ""),
             "concurrency": concurrency, "tile_px": TILE_PX, "stages": results}
    entry["total"] = {
        "seconds": sum(r["seconds"] for k, r in results.items() if k in CHAIN),
        "process_wall_seconds": sum(r["process_wall_seconds"] for k, r in results.items() if k in CHAIN),
        "cpu_seconds": sum(r["cpu_seconds"] for k, r in results.items() if k in CHAIN),
        "peak_rss_mb": max(r["peak_rss_mb"] for k, r in results.items() if k in CHAIN),
        "bytes": sum(r["bytes"] for k, r in results.items() if k in CHAIN),
        "requests": sum(r["requests"] for k, r in results.items() if k in CHAIN),
        "projected_100mbit_seconds": sum(r["projected_100mbit_seconds"] for k, r in results.items() if k in CHAIN),
        "pixel_observations": obs,
    }
    if not keep:
        shutil.rmtree(out, ignore_errors=True)
    print_fraction(entry)
    return entry


def print_fraction(e: dict) -> None:
    m = e["selection"]
    rows_px, cols_px = m["grid_shape"]
    x0, y0, x1, y1 = m["extent_27700"]
    f = e["stages"]["frequency"]
    land_pct = 100.0 * m["land_pixels"] / (rows_px * cols_px)
    print(f"\nNational benchmark, fraction {e['label']}: {(x1 - x0) / 1000:,.0f} × {(y1 - y0) / 1000:,.0f} km "
          f"({cols_px:,} × {rows_px:,} px at 20 m, EPSG:27700, {land_pct:.0f} % land), {m['items']:,} items of "
          f"{m['datatakes']} datatakes over {len(m['tiles'])} MGRS tiles (UTM "
          f"{'/'.join(sorted({t[:2] for t in m['tiles']}))}), {m['zones']:,} zones; "
          f"{f['pixel_observations'] / 1e9:,.2f} G pixel-observations ({f['pixel_observations'] / max(1, m['land_pixels']):.0f} "
          f"per land pixel); loopback nginx, {e['concurrency']} acquisitions in flight, {e['tile_px']}-px tiles, 2 cores; "
          f"core at {e.get('commit', '?')}")
    rows = []
    for stage, r in list(e["stages"].items()) + [("total", None)]:
        if r is None:
            t = e["total"]
            rows.append(["total", _fmt_s(t["seconds"]), _fmt_s(t["cpu_seconds"]), f"{t['peak_rss_mb']:,.0f} MB",
                         _fmt_mb(t["bytes"]), f"{t['requests']:,}", f"{t['pixel_observations'] / 1e6 / t['seconds']:,.1f}",
                         "", _fmt_s(t["projected_100mbit_seconds"])])
            continue
        rows.append([stage, _fmt_s(r["seconds"]), _fmt_s(r["cpu_seconds"]), f"{r['peak_rss_mb']:,.0f} MB",
                     _fmt_mb(r["bytes"]), f"{r['requests']:,}", f"{r['mpx_obs_per_s']:,.1f}", f"{r['mpx_per_s']:,.1f}",
                     _fmt_s(r["projected_100mbit_seconds"])])
    print(table(["stage", "wall", "CPU", "peak RSS", "fetched", "requests", "M px-obs/s", "M px/s",
                 "at 100 Mbit/s"], rows))
    print(f"  frequency: items parsed and normalised in {f['load_seconds']:.1f} s (RSS then {f['rss_after_load_mb']:,.0f} MB); "
          f"{f['acquisitions']} acquisitions, {f['tiles']} tiles, {f['unreadable']} unreadable; "
          f"{f['header_requests']:,} header requests; nginx used {f['server_cpu_seconds']:,.0f} s CPU beside it; "
          f"nginx sent {_fmt_mb(f['nginx_bytes'])}; CPU/wall {f['cpu_seconds'] / f['seconds']:.2f} of 2 cores; "
          f"1-min load average {f['load_average_1min'][0]:.1f} before, {f['load_average_1min'][1]:.1f} after")
    if "finished_unconsumed" in f:
        q = f["finished_unconsumed"]
        print(f"  frequency: finished acquisitions waiting to be added to their tile: max {q['max']}, mean {q['mean']:.1f} "
              f"(each holds ~20 MB of arrays)")
    if "memory" in f:
        mem = f["memory"]
        print(f"  frequency RSS (sampled each second): median {mem['rss_counting_median_mb']:,.0f} MB and max "
              f"{mem['rss_counting_max_mb']:,.0f} MB while counting tiles, max {mem['rss_writing_max_mb']:,.0f} MB while "
              f"writing the outputs (0–95 % / 95–100 % of its progress)")
    fit = e["stages"]["adjustment"]["fit"]
    z = e["stages"]["zonal"]
    print(f"  adjustment: slope {fit['slope']:.4f}, median deviation {fit['median_deviation_pct']:.3f} %, "
          f"R² {fit['r2']:.3f}, {fit['shifted']:,} of {fit['pixels']:,} pixels shifted, mean "
          f"{fit['mean_before']:.2f} → {fit['mean_after']:.2f} %")
    pub = e["stages"].get("published")
    if pub:
        a = e["stages"]["adjustment"]
        print(f"  published 2024 release's adjustment (METHOD=2, beside the documented one, not in the total): "
              f"{_fmt_s(pub['seconds'])} vs {_fmt_s(a['seconds'])} ({pub['seconds'] / a['seconds']:.2f}×), peak RSS "
              f"{pub['peak_rss_mb']:.0f} vs {a['peak_rss_mb']:.0f} MB; {pub['fit']['pixels']:,} rows fitted, "
              f"{pub['fit']['rows_left_out']:,} left out")
    print(f"  zonal: {z['zones_with_data']:,} of {z['zones']:,} zones with data, mean of area means "
          f"{z['mean_of_area_means']:.2f} %")
    t = e["total"]
    transfer = sum(r["transfer_100mbit_seconds"] for k, r in e["stages"].items() if k in CHAIN)
    print(f"  at 100 Mbit/s: {_fmt_mb(t['bytes'])} take {_fmt_s(transfer)} on the link; overlapped with compute "
          f"(max per stage) {_fmt_s(t['projected_100mbit_seconds'])} = {t['projected_100mbit_seconds'] / 3600:.2f} h")
    ref = REFERENCE
    ref_obs = (ref["tile_km"] * 50) ** 2 * ref["tile_scenes"]  # 1,000 × 1,000 px × 713 scenes, an upper bound
    ref_s = ref["tile_minutes"] * 60
    ours_cpu_per_mobs = t["cpu_seconds"] / (t["pixel_observations"] / 1e6)
    ours_tile_s = t["seconds"] / (m["land_pixels"] / 1e6)
    print(f"  reference pipeline: SLURM job of {ref['cpus']} CPUs, {ref['memory_gb']} GB, {ref['limit_h']} h limit; one "
          f"{ref['tile_km']} km tile-year ({ref['tile_scenes']} scenes) in {ref['tile_minutes']} min uncached: at most "
          f"{ref_obs / 1e6 / ref_s:.2f} M px-obs/s per task, at least {ref_s / (ref_obs / 1e6):.2f} task-s per M px-obs. "
          f"Ours: {t['pixel_observations'] / 1e6 / t['seconds']:.1f} M px-obs/s on 2 cores, {ours_cpu_per_mobs:.3f} CPU-s "
          f"per M px-obs; a 20 km tile-year of land every {ours_tile_s:.1f} s")


def print_growth(data: dict) -> None:
    entries = sorted(data["fractions"].values(), key=lambda e: e["fraction"])
    if len(entries) < 2:
        return
    print("\nGrowth across fractions (each against the smallest):")
    first = entries[0]
    rows = []
    for e in entries:
        t = e["total"]
        r = lambda k: t[k] / first["total"][k] if first["total"][k] else float("nan")  # noqa: E731
        rows.append([e["label"], f"{e['selection']['items']:,}", f"{t['pixel_observations'] / 1e9:.2f} G",
                     _fmt_s(e["stages"]["frequency"]["seconds"]), _fmt_s(e["stages"]["adjustment"]["seconds"]),
                     _fmt_s(e["stages"]["zonal"]["seconds"]), _fmt_s(t["seconds"]), f"{r('pixel_observations'):.1f}×",
                     f"{r('seconds'):.1f}×", f"{t['pixel_observations'] / 1e6 / t['seconds']:.1f}",
                     f"{t['peak_rss_mb']:,.0f} MB", _fmt_mb(t["bytes"]), _fmt_s(t["projected_100mbit_seconds"])])
    print(table(["fraction", "items", "px-obs", "frequency", "adjustment", "zonal", "total", "px-obs ×", "time ×",
                 "M px-obs/s", "peak RSS", "fetched", "at 100 Mbit/s"], rows))
    top = entries[-1]
    if top["fraction"] < 1:
        import national_archive as na

        full = na.describe()
        k_area = 1 / top["fraction"]
        k_items = full["items"] / top["selection"]["items"]
        t = top["total"]
        print(f"  projected to the whole extent from {top['label']} (×{k_area:.0f} by area, ×{k_items:.1f} by items): "
              f"compute {t['seconds'] * k_items / 60:,.0f}–{t['seconds'] * k_area / 60:,.0f} min, at 100 Mbit/s "
              f"{t['projected_100mbit_seconds'] * k_items / 3600:.2f}–{t['projected_100mbit_seconds'] * k_area / 3600:.2f} h")
    final = entries[-1]["total"]
    print(f"  goals at {entries[-1]['label']}: peak RSS {final['peak_rss_mb']:,.0f} MB ≤ 4,096: "
          f"{'yes' if final['peak_rss_mb'] <= GOALS['peak_rss_mb'] else 'NO'}; compute {final['seconds'] / 60:.1f} min ≤ 60: "
          f"{'yes' if final['seconds'] <= 3600 else 'NO'}; at 100 Mbit/s {final['projected_100mbit_seconds'] / 3600:.2f} h ≤ 2: "
          f"{'yes' if final['projected_100mbit_seconds'] <= 7200 else 'NO'}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fraction", action="append", type=str,
                        help="share of the extent's area: 1/16, 1/4, 1 (1/64, 1/256 for development); repeatable")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    parser.add_argument("--keep", action="store_true", help="keep the output rasters under .build/national/run-*/out")
    parser.add_argument("--child", nargs=2, metavar=("STAGE", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0
    fractions = [_parse_fraction(f) for f in (args.fraction or ["1/16", "1/4", "1"])]
    OUT.mkdir(exist_ok=True)
    path = OUT / "bench_national.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data.setdefault("fractions", {})
    data["reference"] = REFERENCE
    data["goals"] = GOALS
    for fraction in fractions:
        entry = run_fraction(fraction, args.concurrency, args.keep)
        data["fractions"][entry["label"]] = entry
        path.write_text(json.dumps(data, indent=1, default=str))
    print_growth(data)
    print(f"\n(figures in {path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
