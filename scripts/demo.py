"""`make demo`: the main job on the bundled sample archive, headless, through qgis_process.

1. writes the sample archive (a synthetic year of Sentinel-2 L2A scenes around Greenwich,
   with its truth) under .build/sample-small, unless it is there already;
2. serves it for real on loopback: nginx for the COGs (HTTP Range), `rustac serve` for STAC;
3. runs `cloudprob:searchscenes` for the archive's area and 2024 through scripts/qgis_process;
4. writes demo_out/scenes.gpkg and prints a short summary.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / ".build"
OUT = ROOT / "demo_out"


def _plugin_importable() -> None:
    plugins = BUILD / "plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    link = plugins / "cloud_probability"
    if not link.exists():
        link.symlink_to(ROOT, target_is_directory=True)
    sys.path[:0] = [str(plugins), str(ROOT / "scripts")]


def main() -> int:
    _plugin_importable()
    import servers
    from cloud_probability.core.sample_archive import SampleSpec, generate

    t0 = time.monotonic()
    archive = generate(BUILD / "sample-small", SampleSpec.small())
    info = json.loads((archive / "archive.json").read_text())
    print(f"Sample archive: {archive} ({info['items']} items, {info['datatakes']} datatakes) "
          f"in {time.monotonic() - t0:.1f} s")
    OUT.mkdir(exist_ok=True)
    scenes_path = OUT / "scenes.gpkg"
    if scenes_path.exists():
        scenes_path.unlink()
    xmin, ymin, xmax, ymax = info["aoi_27700"]
    with servers.SampleServers(archive, BUILD / "demo-servers") as running:
        print(f"STAC API {running.stac.url}   COGs {running.cogs.url}")
        cmd = [
            str(ROOT / "scripts" / "qgis_process"), "--json", "run", "cloudprob:searchscenes", "--",
            f"STAC_URL={running.stac.url}", "COLLECTION=sentinel-2-l2a",
            f"AOI={xmin},{xmax},{ymin},{ymax} [EPSG:27700]",
            "START_DATE=2024-01-01", "END_DATE=2024-12-31", "MAX_SCENE_CLOUD=100",
            f"OUTPUT={scenes_path}",
        ]
        print("$ " + " ".join(cmd[:4] + ["--", "…"]))
        t1 = time.monotonic()
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0:
            print(run.stdout[-4000:], run.stderr[-4000:], sep="\n", file=sys.stderr)
            print("cloudprob:searchscenes failed", file=sys.stderr)
            return 1
        elapsed = time.monotonic() - t1
    report = json.loads(run.stdout)
    for line in report.get("log", {}).get("info", [])[-3:]:
        print("  " + line)

    import geopandas as gpd

    scenes = gpd.read_file(scenes_path)
    by_tile = scenes.groupby("mgrs_tile").size().to_dict()
    clear = scenes[scenes["scene_cloud"] <= 10]
    print()
    print(f"Wrote {scenes_path.relative_to(ROOT)}: {len(scenes)} scenes from "
          f"{scenes['datatake_id'].nunique()} acquisitions in {elapsed:.1f} s")
    print(f"  tiles: {by_tile}")
    print(f"  UTM zones (EPSG): {sorted(scenes['epsg'].unique().tolist())}; "
          f"relative orbits: {sorted(scenes['relative_orbit'].unique().tolist())}")
    print(f"  scene cloud (eo:cloud_cover): median {scenes['scene_cloud'].median():.1f} %, "
          f"{len(clear)} scenes at most 10 %")
    dup = scenes.groupby(["datatake_id", "mgrs_tile"]).size()
    print(f"  products sharing a datatake and tile (split datastrips, reprocessing): {int((dup > 1).sum())}")
    print("Open demo_out/scenes.gpkg in QGIS, or run any cloudprob algorithm with scripts/qgis_process.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
