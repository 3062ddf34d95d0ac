"""`make bench-dask`: the reference chain on a Dask LocalCluster against in-process threads, the cores held equal.

The national benchmark's synthetic year (benchmarks/national_archive.py) at ``--fraction`` of its
extent, its COGs served by nginx on 127.0.0.1 with Range support (scripts/servers.py CogServer).
The three stages of the shipped model, called through core as bench_national.py calls them:
``cloud_frequency`` (mean of ``cloud`` over SCL-valid observations, 2048-px tiles) →
``reference_adjustment`` (21×21, 5 %) → ``zonal_statistics`` (adjusted probability, counts and
spread), run twice:

* here: this process, the frequency tiles one after another, each reading with 4 threads
  (cloudprob:cloudfrequency's default; about 2 × this machine's 2 cores);
* on the cluster: a ``distributed.LocalCluster`` on 127.0.0.1 of 2 worker processes × 1 thread
  (the same 2 cores), each tile a task reading with 4 / 2 = 2 threads, so 4 reads are in flight
  in both runs. A ``core.executor.DaskExecutor`` per stage is the ``scheduler`` argument; its
  counters give the tasks and the pickled bytes shipped each way.

Per stage: wall time of both runs and their ratio (target ≤ 1.3×), CPU seconds (this process; on
the cluster also the workers', through ``Client.run`` of ``getrusage``), tasks, bytes sent and
received per task, and whether the outputs are the same (rasters byte for byte, the zonal table
exactly). Then the projection of the UK year on a 16-worker cluster from the largest fraction in
bench_out/bench_dask.json, with its assumptions. Figures are merged into bench_out/bench_dask.json.

The archive is read where bench_national.py keeps it (.build/national), never written when the
fraction's selection is already made; the runs' outputs go under .build/dask-runs. Serving the
archive and rewriting the items' hrefs are the same few lines as in bench_national.py.
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

NATIONAL = BUILD / "national"
RUNS = BUILD / "dask-runs"
CONCURRENCY = 4  # reads in flight in this process (cloudprob:cloudfrequency's default)
WORKERS = 2  # worker processes × 1 thread: this machine's 2 cores
TILE_PX = 2048
STAGES = ("frequency", "adjustment", "zonal")
TARGET_RATIO = 1.3
PROJECTION = {"workers": 16, "link_bit_per_s": 1e9}  # the projected cluster, and its client's link


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _workers_cpu_s(client) -> float:
    """CPU seconds of the worker processes so far (all their threads: tasks and communication)."""
    return sum(r[0] + r[1] for r in client.run(resource.getrusage, resource.RUSAGE_SELF).values())


def _fmt_s(s: float) -> str:
    return f"{s:,.0f} s" if s >= 100 else f"{s:.1f} s"


def _fmt_b(b: float) -> str:
    if b >= 1e9:
        return f"{b / 1e9:,.2f} GB"
    if b >= 1e6:
        return f"{b / 1e6:,.1f} MB"
    return f"{b / 1e3:,.1f} kB"


def selection(fraction: float) -> dict:
    """The fraction's selection of the national archive: read as it is when bench_national.py (or
    an earlier run) made it, else made by ``national_archive.prepare`` (which renders and writes)."""
    import national_archive as na

    root = na.archive_dir(NATIONAL, na.NationalSpec())
    meta_path = root / "fractions" / na.fraction_label(fraction).replace("/", "-") / "selection.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if all((root / "pool" / t / "done.json").exists() for t in meta["tiles"]):
            return meta
    return na.prepare(fraction, NATIONAL, workers=WORKERS)


def served_scenes(meta: dict, base_url: str) -> list:
    """The selection's items with their ``scl`` and ``cloud`` hrefs on the server (as in bench_national.py)."""
    from cloud_probability.core.stac import normalise_item

    scenes = []
    with open(meta["items_path"]) as src:
        for line in src:
            item = json.loads(line)
            for key in ("scl", "cloud"):
                item["assets"][key]["href"] = f"{base_url}/{item['assets'][key]['href']}"
            scenes.append(normalise_item(item))
    return scenes


def warm_page_cache(meta: dict) -> int:
    """Read the selection's COGs once, so that neither run pays the disk for the other (bytes read)."""
    total = 0
    for tile in meta["tiles"]:
        for path in sorted((Path(meta["root"]) / "pool" / tile).rglob("*.tif")):
            with open(path, "rb") as fh:
                while chunk := fh.read(1 << 24):
                    total += len(chunk)
    return total


def run_chain(scenes, grid, zones, folder: Path, concurrency: int, client=None) -> tuple[dict, dict]:
    """The three stages into ``folder``: in this process, or with ``client`` on its cluster. Returns
    the figures per stage and the outputs (paths, and the zonal table)."""
    from cloud_probability.core.executor import DaskExecutor
    from cloud_probability.core.frequency import cloud_frequency
    from cloud_probability.core.masks import PRESETS
    from cloud_probability.core.reading import clear_http_cache
    from cloud_probability.core.smoothing import reference_adjustment
    from cloud_probability.core.zonal import zonal_statistics

    out = folder / "out"
    out.mkdir(parents=True)
    paths = {k: str(out / f"{k}.tif") for k in ("probability", "valid", "cloudy", "stdev", "smoothed", "adjusted")}
    clear_http_cache()  # this process reads cold, as the fresh workers do
    figures: dict = {}
    table_ = None
    for stage in STAGES:
        executor = DaskExecutor(client) if client is not None else None
        load0 = os.getloadavg()[0]
        c0 = _cpu_s()
        w0 = _workers_cpu_s(client) if client is not None else 0.0
        t0 = time.monotonic()
        if stage == "frequency":
            counts = {k: paths[k] for k in ("probability", "valid", "cloudy", "stdev")}
            r = cloud_frequency(scenes, grid, PRESETS["scl"], counts,
                                measure="mean_probability", probability_asset="cloud", tile_px=TILE_PX,
                                concurrency=concurrency, cache_dir=folder / "cache", scheduler=executor)
            extra = {"tiles": r.tiles, "acquisitions": r.acquisitions, "pixel_observations": r.pixel_observations,
                     "unreadable": len(r.unreadable)}
        elif stage == "adjustment":
            r = reference_adjustment(paths["cloudy"], paths["valid"], paths["smoothed"], paths["adjusted"], size=21,
                                     threshold_pct=5.0, scheduler=executor)
            extra = {"slope": r.slope, "pixels": r.pixels}
        else:
            r = zonal_statistics(paths["adjusted"], zones, "code", valid_path=paths["valid"],
                                 spread_path=paths["stdev"], scheduler=executor)
            table_ = r.table
            extra = {"zones": int(len(r.table))}
        wall = time.monotonic() - t0
        here_cpu = _cpu_s() - c0
        workers_cpu = (_workers_cpu_s(client) - w0) if client is not None else 0.0
        f = {"seconds": wall, "cpu_seconds_here": here_cpu, "cpu_seconds_workers": workers_cpu,
             "cpu_seconds": here_cpu + workers_cpu, "load_average_1min": [load0, os.getloadavg()[0]], **extra}
        if executor is not None:
            f.update(tasks=executor.tasks, bytes_sent=executor.bytes_sent, bytes_received=executor.bytes_received)
        figures[stage] = f
        where = "cluster" if client is not None else "here"
        print(f"    {where:7s} {stage:10s} {_fmt_s(wall)}, CPU {_fmt_s(f['cpu_seconds'])}"
              + (f", {f['tasks']} tasks, {_fmt_b(f['bytes_sent'])} sent, {_fmt_b(f['bytes_received'])} received"
                 if executor is not None else ""), flush=True)
    outputs = {"rasters": {k: paths[k] for k in ("probability", "valid", "cloudy", "stdev", "smoothed", "adjusted")},
               "reports": [os.path.splitext(paths["adjusted"])[0] + ".regression.json"], "table": table_}
    return figures, outputs


def same_outputs(here: dict, there: dict) -> dict:
    """Per stage: whether the cluster's outputs are this process's, byte for byte (rasters, the
    fit's report) and exactly (the zonal table), with what differs."""
    import pandas as pd

    def files(keys, extra=()):
        differ = [k for k in keys if Path(here["rasters"][k]).read_bytes() != Path(there["rasters"][k]).read_bytes()]
        differ += [Path(a).name for a, b in extra if Path(a).read_text() != Path(b).read_text()]
        return {"identical": not differ, "differ": differ}

    try:
        pd.testing.assert_frame_equal(here["table"], there["table"], check_exact=True)
        zonal = {"identical": True, "differ": []}
    except AssertionError as exc:
        zonal = {"identical": False, "differ": [str(exc).splitlines()[0]]}
    return {"frequency": files(("probability", "valid", "cloudy", "stdev")),
            "adjustment": files(("smoothed", "adjusted"), zip(here["reports"], there["reports"])),
            "zonal": zonal}


def run_fraction(fraction: float, keep: bool) -> dict:
    ensure_plugin_importable()
    import geopandas as gpd
    import national_archive as na
    import servers
    from distributed import Client, LocalCluster

    from cloud_probability.core.frequency import grid_for_area

    label = na.fraction_label(fraction)
    print(f"== fraction {label}", flush=True)
    meta = selection(fraction)
    run = RUNS / f"run-{label.replace('/', '-')}"
    if run.exists():
        shutil.rmtree(run)
    run.mkdir(parents=True)
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    warmed = warm_page_cache(meta) if meta["pool_bytes"] < available / 2 else 0
    grid = grid_for_area(tuple(meta["extent_27700"]), "EPSG:27700", 20.0)
    zones = gpd.read_file(meta["zones_path"], layer="zones")  # read once, outside the timings
    per_task = max(1, CONCURRENCY // WORKERS)
    with servers.CogServer(meta["root"], workdir=run / "nginx") as cogs:
        scenes = served_scenes(meta, cogs.url)
        print(f"  here: this process, {CONCURRENCY} reads in flight", flush=True)
        here, here_out = run_chain(scenes, grid, zones, run / "here", CONCURRENCY)
        # the workers are new processes: they import cloud_probability through PYTHONPATH (the
        # checkout's link, as the tests do; a cluster node would have the wheel)
        old = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = os.pathsep.join([str(BUILD / "plugins")] + ([old] if old else []))
        try:
            with LocalCluster(n_workers=WORKERS, threads_per_worker=1, processes=True, host="127.0.0.1",
                              dashboard_address=None, local_directory=str(run / "dask")) as cluster, \
                    Client(cluster) as client:
                # started and imported before the clock runs, as on a cluster that is up
                client.run(exec, "import cloud_probability.core.frequency, cloud_probability.core.smoothing, "
                                 "cloud_probability.core.zonal")
                print(f"  cluster: LocalCluster of {WORKERS} worker processes × 1 thread, each tile reading with "
                      f"{per_task} threads", flush=True)
                there, there_out = run_chain(scenes, grid, zones, run / "cluster", per_task, client)
        finally:
            if old is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = old
    same = same_outputs(here_out, there_out)
    stages = {}
    for stage in STAGES:
        h, c = here[stage], there[stage]
        tasks = max(1, c["tasks"])
        stages[stage] = {
            "here": h, "cluster": c, "ratio": c["seconds"] / h["seconds"] if h["seconds"] else float("nan"),
            "task_cpu_seconds": c["cpu_seconds_workers"] / tasks,
            "bytes_sent_per_task": c["bytes_sent"] / tasks, "bytes_received_per_task": c["bytes_received"] / tasks,
            "same_outputs": same[stage],
        }
    head = subprocess.run(["git", "-C", str(BUILD.parent), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(BUILD.parent), "status", "--porcelain", "core"], capture_output=True,
                           text=True).stdout.strip()
    entry = {
        "fraction": fraction, "label": label, "commit": head + ("+uncommitted core changes" if dirty else ""),
        "selection": {k: meta[k] for k in ("extent_27700", "grid_shape", "land_pixels", "items", "datatakes", "tiles",
                                           "zones", "pool_bytes")},
        "page_cache_warmed_bytes": warmed, "concurrency_here": CONCURRENCY, "workers": WORKERS,
        "threads_per_worker": 1, "concurrency_per_task": per_task, "tile_px": TILE_PX, "stages": stages,
    }
    totals = {}
    for side in ("here", "cluster"):
        totals[side] = {k: sum(s[side][k] for s in stages.values()) for k in ("seconds", "cpu_seconds")}
    for k in ("tasks", "bytes_sent", "bytes_received", "cpu_seconds_workers", "cpu_seconds_here"):
        totals["cluster"][k] = sum(s["cluster"][k] for s in stages.values())
    totals["ratio"] = totals["cluster"]["seconds"] / totals["here"]["seconds"]
    totals["same_outputs"] = all(s["same_outputs"]["identical"] for s in stages.values())
    entry["total"] = totals
    if not keep:
        for side in ("here", "cluster"):
            shutil.rmtree(run / side, ignore_errors=True)
    print_fraction(entry)
    return entry


def print_fraction(e: dict) -> None:
    m = e["selection"]
    rows_px, cols_px = m["grid_shape"]
    print(f"\nDask against in-process threads, fraction {e['label']}: {cols_px:,} × {rows_px:,} px at 20 m, "
          f"{m['items']:,} items, {m['zones']:,} zones; 2 cores either way: here {e['concurrency_here']} reads in "
          f"flight, on the cluster {e['workers']} workers × {e['threads_per_worker']} thread, "
          f"{e['concurrency_per_task']} reads per tile task; loopback nginx; core at {e['commit']}"
          + (f"; the COGs ({_fmt_b(e['page_cache_warmed_bytes'])}) read once beforehand into the page cache"
             if e["page_cache_warmed_bytes"] else ""))
    rows = []
    for stage, s in list(e["stages"].items()):
        h, c = s["here"], s["cluster"]
        rows.append([stage, _fmt_s(h["seconds"]), _fmt_s(c["seconds"]), f"{s['ratio']:.2f}×",
                     _fmt_s(h["cpu_seconds"]), f"{_fmt_s(c['cpu_seconds'])} ({_fmt_s(c['cpu_seconds_workers'])})",
                     str(c["tasks"]), _fmt_s(s["task_cpu_seconds"]), _fmt_b(s["bytes_sent_per_task"]),
                     _fmt_b(s["bytes_received_per_task"]), "yes" if s["same_outputs"]["identical"] else "NO"])
    t = e["total"]
    rows.append(["total", _fmt_s(t["here"]["seconds"]), _fmt_s(t["cluster"]["seconds"]), f"{t['ratio']:.2f}×",
                 _fmt_s(t["here"]["cpu_seconds"]),
                 f"{_fmt_s(t['cluster']['cpu_seconds'])} ({_fmt_s(t['cluster']['cpu_seconds_workers'])})",
                 str(t["cluster"]["tasks"]), "", _fmt_b(t["cluster"]["bytes_sent"]),
                 _fmt_b(t["cluster"]["bytes_received"]), "yes" if t["same_outputs"] else "NO"])
    print(table(["stage", "wall here", "wall cluster", "ratio", "CPU here", "CPU cluster (workers)", "tasks",
                 "CPU/task", "sent/task", "received/task", "same outputs"], rows))
    print("  (total row: bytes are the run's, not per task; CPU cluster = this process — client and scheduler — "
          "plus the workers)")
    verdict = "yes" if t["ratio"] <= TARGET_RATIO else "NO"
    print(f"  target: cluster ≤ {TARGET_RATIO}× in-process wall time: {t['ratio']:.2f}×, {verdict}; per stage "
          + ", ".join(f"{k} {s['ratio']:.2f}×" for k, s in e["stages"].items()))
    for stage, s in e["stages"].items():
        if not s["same_outputs"]["identical"]:
            print(f"  {stage}: outputs DIFFER: {', '.join(s['same_outputs']['differ'])}")
    if t["same_outputs"]:
        print("  outputs: the cluster's rasters are this process's byte for byte (probability, valid, cloudy, stdev, "
              "smoothed, adjusted, the fit's report) and its zonal table is the same exactly")
    load = [e["stages"][k][side]["load_average_1min"] for k in STAGES for side in ("here", "cluster")]
    print(f"  1-min load average during the runs: {min(min(v) for v in load):.1f}–{max(max(v) for v in load):.1f} "
          "(the machine is shared: others' work shows here)")


def print_projection(data: dict) -> None:
    """The UK year on a 16-worker cluster, from the largest fraction measured."""
    import national_archive as na

    top = max(data["fractions"].values(), key=lambda e: e["fraction"])
    full = na.describe()
    k_items = full["items"] / top["selection"]["items"]
    k_area = 1 / top["fraction"]
    n, link = PROJECTION["workers"], PROJECTION["link_bit_per_s"] / 8
    c = top["total"]["cluster"]
    task_cpu, client_cpu = c["cpu_seconds_workers"], c["cpu_seconds_here"]
    shipped = c["bytes_sent"] + c["bytes_received"]

    def at(k: float) -> float:
        return task_cpu * k / n + shipped * k / link

    low, high = sorted((k_items, k_area))
    print(f"\nProjection, the UK year ({full['items']:,} items, the whole extent) on {n} workers, from fraction "
          f"{top['label']} (core at {top['commit']}): {at(low) / 60:,.0f}–{at(high) / 60:,.0f} min")
    print(f"  = task CPU {_fmt_s(task_cpu)} × k / {n} workers + {_fmt_b(shipped)} shipped between client and "
          f"workers × k / {PROJECTION['link_bit_per_s'] / 1e9:g} Gbit/s, with k = ×{k_items:.1f} (items) to "
          f"×{k_area:.0f} (area) from {top['label']} to the whole")
    print(f"  assumptions: the work grows with the items or the area between those bounds; the tasks spread evenly "
          f"over {n} workers as fast as these cores, one thread each; the client's link carries every job and "
          f"result one after another, not overlapped with the computing; the workers read the COGs from the "
          f"catalogue over their own network, which does not limit them; the client's own work (adding the "
          f"tiles, writing the rasters, the scheduler: {_fmt_s(client_cpu)} here, {_fmt_s(client_cpu * low)}–"
          f"{_fmt_s(client_cpu * high)} scaled) is left out: if none of it overlapped the tasks it would add "
          f"{client_cpu * low / 60:,.0f}–{client_cpu * high / 60:,.0f} min")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fraction", action="append", type=str,
                        help="share of the national extent's area: 1/256, 1/64, 1/16 …; repeatable (default 1/64)")
    parser.add_argument("--keep", action="store_true", help="keep the outputs under .build/dask-runs/run-*/")
    args = parser.parse_args(argv)
    fractions = [float(Fraction(f)) for f in (args.fraction or ["1/64"])]
    import national_archive as na

    na.allow_loopback_assets()  # before the cluster's workers start: they inherit it
    OUT.mkdir(exist_ok=True)
    path = OUT / "bench_dask.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data.setdefault("fractions", {})
    data["projection"] = PROJECTION
    data["target_ratio"] = TARGET_RATIO
    same = True
    for fraction in fractions:
        entry = run_fraction(fraction, args.keep)
        data["fractions"][entry["label"]] = entry
        path.write_text(json.dumps(data, indent=1, default=str))
        same &= entry["total"]["same_outputs"]
    print_projection(data)
    print(f"\n(figures in {path})")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
