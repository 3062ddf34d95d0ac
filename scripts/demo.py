"""`make demo`: the main job on the bundled sample archive, headless, through qgis_process.

1. writes the sample archive (a synthetic year of Sentinel-2 L2A scenes around Greenwich,
   with its truth) under .build/sample-small, unless it is there already;
2. serves it for real on loopback: nginx for the COGs (HTTP Range), `rustac serve` for STAC;
3. through scripts/qgis_process: `cloudprob:searchscenes` for the archive's area and 2024,
   `cloudprob:screenscenes` for a 2 km × 2 km area around Greenwich (cloud inside the area, not
   the scene's), `cloudprob:cloudmask` of one scene and `cloudprob:cloudfrequency` (per-pixel
   probability over the year on a 20 m EPSG:27700 grid across UTM zones 30 and 31);
4. writes demo_out/scenes.gpkg, screened.gpkg, cloud_mask.tif, probability.tif, valid.tif and
   cloudy.tif and prints a short summary, with the probability compared to the archive's truth.
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


def _run(algorithm: str, args: list[str]):
    """Run one algorithm through scripts/qgis_process; (JSON report, seconds) or (None, s)."""
    cmd = [str(ROOT / "scripts" / "qgis_process"), "--json", "run", algorithm, "--", *args]
    print(f"$ scripts/qgis_process run {algorithm} -- …")
    t0 = time.monotonic()
    run = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.monotonic() - t0
    if run.returncode != 0:
        print(run.stdout[-4000:], run.stderr[-4000:], sep="\n", file=sys.stderr)
        print(f"{algorithm} failed", file=sys.stderr)
        return None, elapsed
    return json.loads(run.stdout), elapsed


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
    for old in ("scenes.gpkg", "screened.gpkg", "cloud_mask.tif", "probability.tif", "valid.tif", "cloudy.tif"):
        if (OUT / old).exists():
            (OUT / old).unlink()
    xmin, ymin, xmax, ymax = info["aoi_27700"]
    with servers.SampleServers(archive, BUILD / "demo-servers") as running:
        print(f"STAC API {running.stac.url}   COGs {running.cogs.url}")
        report, elapsed = _run("cloudprob:searchscenes", [
            f"STAC_URL={running.stac.url}", "COLLECTION=sentinel-2-l2a",
            f"AOI={xmin},{xmax},{ymin},{ymax} [EPSG:27700]",
            "START_DATE=2024-01-01", "END_DATE=2024-12-31", "MAX_SCENE_CLOUD=100", f"OUTPUT={scenes_path}",
        ])
        if report is None:
            return 1
        gx, gy = 538_900, 177_600  # Greenwich, on the UTM 30/31 boundary
        screened_path = OUT / "screened.gpkg"
        screen, screen_s = _run("cloudprob:screenscenes", [
            f"SCENES={scenes_path}", f"AOI={gx - 1000},{gx + 1000},{gy - 1000},{gy + 1000} [EPSG:27700]",
            "MAX_AOI_CLOUD=100", "MIN_AOI_VALID=50", f"OUTPUT={screened_path}",
        ])
        if screen is None:
            return 1
        import geopandas as gpd

        screened = gpd.read_file(screened_path).sort_values("aoi_rank")
        clearest = screened.iloc[0]
        mask_path = OUT / "cloud_mask.tif"
        ranked = gpd.read_file(scenes_path).sort_values("scene_cloud")
        half_cloudy = ranked.iloc[len(ranked) // 2]  # a scene with clouds, shadows and clear ground
        mask, mask_s = _run("cloudprob:cloudmask", [
            f"SCENES={scenes_path}", f"SCENE_ID={half_cloudy['item_id']}", f"OUTPUT={mask_path}",
        ])
        if mask is None:
            return 1
        freq, freq_s = _run("cloudprob:cloudfrequency", [
            f"SCENES={scenes_path}", f"AOI={xmin},{xmax},{ymin},{ymax} [EPSG:27700]", "TARGET_CRS=EPSG:27700",
            "RESOLUTION=20", f"OUTPUT_PROBABILITY={OUT / 'probability.tif'}", f"OUTPUT_VALID={OUT / 'valid.tif'}",
            f"OUTPUT_CLOUDY={OUT / 'cloudy.tif'}",
        ])
        if freq is None:
            return 1

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
    print(f"Wrote {screened_path.relative_to(ROOT)}: {len(screened)} acquisitions over 2 km × 2 km at Greenwich "
          f"in {screen_s:.1f} s ({screen['log']['info'][-1].split('Fetched')[-1].strip()})")
    print("  clearest over the area (area cloud vs the scene-level figure):")
    for _, row in screened.head(5).iterrows():
        print(f"    {str(row['datetime'])[:10]}  area {row['aoi_cloud_pct']:5.1f} %   scene {row['scene_cloud']:5.1f} %"
              f"   valid {row['aoi_valid_pct']:5.1f} %   {row['n_products']} products")
    misleading = screened[(screened["scene_cloud"] < 20) & (screened["aoi_cloud_pct"] > 50)]
    print(f"  acquisitions whose scene says < 20 % cloud but the area is > 50 % cloudy: {len(misleading)}")
    print(f"Wrote {mask_path.relative_to(ROOT)}: cloud mask of {half_cloudy['item_id']} in {mask_s:.1f} s")
    import numpy as np
    import rasterio

    with rasterio.open(OUT / "probability.tif") as ds:
        prob = ds.read(1, masked=True)
    with rasterio.open(OUT / "valid.tif") as ds:
        valid = ds.read(1)
    truth_path = archive / "truth" / "probability_27700.tif"
    with rasterio.open(truth_path) as ds:
        truth = ds.read(1)
    print(f"Wrote demo_out/probability.tif, valid.tif, cloudy.tif ({prob.shape[1]} × {prob.shape[0]} px, EPSG:27700, "
          f"20 m) in {freq_s:.1f} s: {freq['log']['info'][-1].split(';')[0]}")
    print(f"  valid observations per pixel {valid.min()}–{valid.max()} (partial swaths, two orbits); "
          f"mean probability {prob.mean():.1f} % (truth {truth.mean():.1f} %), "
          f"per-pixel RMSE against the truth {np.sqrt(((prob - truth) ** 2).mean()):.1f} points before smoothing")
    print("Open demo_out/ in QGIS, or run any cloudprob algorithm with scripts/qgis_process.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
