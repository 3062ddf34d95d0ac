"""Per-pixel cloud frequency: cloudprob (core.frequency) against the peer a Python user would
pick — odc-stac loading the same STAC items from the same HTTP server into xarray, counting with
numpy — on full-size 5490×5490 sample tiles, in the same run.

Each side runs in its own process (ours in .venv on Debian's GDAL; odc-stac in
.build/peer-venv with numpy 2 and its own rasterio/GDAL), so peak memory (VmHWM) is its
own and caches start cold. Both are swept over thread counts; each side's best and its default
are reported. The number of acquisitions is doubled to show how memory grows.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from common import BUILD, ROOT, ensure_plugin_importable, report, table

ensure_plugin_importable()

import servers  # noqa: E402
from bench_screening import full_archive  # noqa: E402
from cloud_probability.sampledata import sample_archive as sa  # noqa: E402

PEER_VENV = BUILD / "peer-venv"
PEER_REQUIREMENTS = ["odc-stac==0.5.3", "dask[array]==2026.8.0", "numpy==2.4.6", "rasterio==1.4.4"]
HALF_KM = 20.0  # a 40 km × 40 km grid at 20 m in EPSG:27700 around Greenwich: 4 tiles, 2 UTM zones
THREADS = (2, 4, 8)
OURS_DEFAULT, PEER_DEFAULT = 4, None  # odc.stac.load without a pool reads one item at a time


def ensure_peer() -> Path:
    python = PEER_VENV / "bin" / "python"
    if not python.exists() or subprocess.run([str(python), "-c", "import odc.stac"], capture_output=True).returncode:
        print("(installing the peer, odc-stac, into its own venv .build/peer-venv)")
        subprocess.run(["python3", "-m", "venv", str(PEER_VENV)], check=True)
        subprocess.run([str(PEER_VENV / "bin" / "pip"), "install", "-q", *PEER_REQUIREMENTS], check=True)
    return python


def run(python: Path, script: str, items: Path, box, threads, out: Path) -> dict:
    args = [str(python), str(ROOT / "benchmarks" / script), str(items), *map(str, box), "27700", "20",
            str(threads if threads is not None else 0), str(out)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=1800)
    if done.returncode:
        raise RuntimeError(f"{script} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> dict:
    archive = full_archive()
    peer = ensure_peer()
    gx, gy = sa.GREENWICH_27700
    half = HALF_KM * 1000
    box = (gx - half, gy - half, gx + half, gy + half)
    work = BUILD / "bench" / "frequency"
    work.mkdir(parents=True, exist_ok=True)
    results = []
    with servers.CogServer(archive, workdir=BUILD / "bench" / "nginx-frequency") as cogs:
        all_items = servers.write_items_for(archive, cogs.url, work / "items_all.json")
        data = json.loads(all_items.read_text())
        takes = sorted({f["properties"]["s2:datatake_id"][:25] for f in data["features"]})
        first_half = set(takes[: len(takes) // 2])
        half_items = work / "items_half.json"
        half_items.write_text(json.dumps({"type": "FeatureCollection", "features": [
            f for f in data["features"] if f["properties"]["s2:datatake_id"][:25] in first_half]}))
        for label, items in (("half", half_items), ("all", all_items)):
            runs = {"ours": {}, "peer": {}}
            for threads in THREADS:
                runs["ours"][threads] = run(Path(sys.executable), "ours_frequency.py", items, box, threads, work / f"ours-{label}")
                runs["peer"][threads] = run(peer, "peer_odc_stac.py", items, box, threads, work / f"peer-{label}.npz")
            runs["peer"]["default"] = run(peer, "peer_odc_stac.py", items, box, PEER_DEFAULT, work / f"peer-{label}.npz")
            results.append({"label": label, "runs": runs})
        agreement = _agreement(work / "ours-all", work / "peer-all.npz")
    rows = []
    for r in results:
        ours, peer_runs = r["runs"]["ours"], r["runs"]["peer"]
        best_ours = min(ours.values(), key=lambda x: x["seconds"])
        best_peer = min(peer_runs.values(), key=lambda x: x["seconds"])
        obs = best_ours["pixel_observations"]
        for name, a, b in (("best vs best", best_ours, best_peer),
                           (f"defaults ({OURS_DEFAULT} thr. / no pool)", ours[OURS_DEFAULT], peer_runs["default"]),
                           (f"both {OURS_DEFAULT} threads", ours[OURS_DEFAULT], peer_runs[OURS_DEFAULT])):
            rows.append([
                f"{best_ours['acquisitions']} acq.", name, f"{a['seconds']:.2f} s", f"{b['seconds']:.2f} s",
                f"{b['seconds'] / a['seconds']:.2f}×", f"{a['peak_rss_mb']:.0f} MB", f"{b['peak_rss_mb']:.0f} MB",
                f"{obs / 1e6 / a['seconds']:.0f}", f"{obs / 1e6 / b['seconds']:.0f}",
            ])
    print(f"Per-pixel cloud frequency: {2 * HALF_KM:g} km × {2 * HALF_KM:g} km at 20 m in EPSG:27700 around Greenwich "
          f"(UTM 30 and 31), full-size SCL COGs over loopback HTTP; threads swept over {THREADS}")
    print(table(["scenes", "comparison", "time (ours)", "time (odc-stac)", "speed-up", "peak mem (ours)",
                 "peak mem (odc-stac)", "M px-obs/s (ours)", "M px-obs/s (odc-stac)"], rows))
    half_mem = max(x["peak_rss_mb"] for x in results[0]["runs"]["ours"].values())
    all_mem = max(x["peak_rss_mb"] for x in results[1]["runs"]["ours"].values())
    half_peer = max(x["peak_rss_mb"] for x in results[0]["runs"]["peer"].values())
    all_peer = max(x["peak_rss_mb"] for x in results[1]["runs"]["peer"].values())
    print(f"  peak memory as acquisitions double ({results[0]['runs']['ours'][OURS_DEFAULT]['acquisitions']} → "
          f"{results[1]['runs']['ours'][OURS_DEFAULT]['acquisitions']}): ours {half_mem:.0f} → {all_mem:.0f} MB, "
          f"odc-stac {half_peer:.0f} → {all_peer:.0f} MB (largest over the thread sweep)")
    print(f"  counts agree with odc-stac's on {agreement['valid_equal_pct']:.2f} % of pixels (valid) and "
          f"{agreement['cloudy_equal_pct']:.2f} % (cloudy); odc-stac counts SCL 1 (defective) as valid and "
          f"resamples with GDAL's approximate transformer")
    print("  goal: ≥ 2× faster than the peer, peak memory below 1.5 GB and flat as the number of scenes doubles")
    report("frequency", {"results": results, "agreement": agreement})
    return {"results": results}


def _agreement(ours_dir: Path, peer_npz: Path) -> dict:
    import rasterio

    with rasterio.open(ours_dir / "valid.tif") as ds:
        valid = ds.read(1)
    with rasterio.open(ours_dir / "cloudy.tif") as ds:
        cloudy = ds.read(1)
    with np.load(peer_npz) as peer:
        pv, pc = peer["valid"], peer["cloudy"]
    return {"valid_equal_pct": float(100 * (valid == pv).mean()), "cloudy_equal_pct": float(100 * (cloudy == pc).mean()),
            "valid_max_abs_diff": int(np.abs(valid.astype(int) - pv).max())}


if __name__ == "__main__":
    t0 = time.monotonic()
    main()
