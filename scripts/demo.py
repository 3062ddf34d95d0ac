"""`make demo`: the main job on the bundled sample archive, headless, through qgis_process.

1. writes the sample archive (a synthetic year of Sentinel-2 L2A scenes around Greenwich,
   with its truth) under .build/sample-small, unless it is there already;
2. serves it for real on loopback: nginx for the COGs (HTTP Range), `rustac serve` for STAC;
3. through scripts/qgis_process: `cloudprob:searchscenes` for the archive's area and 2024,
   `cloudprob:screenscenes` for a 2 km × 2 km area around Greenwich (cloud inside the area, not
   the scene's), `cloudprob:cloudmask` of one scene, and the shipped model
   `cloudprob:annualcloudprobability`, the reference product (search → per-pixel mean of the
   `cloud` probability on a 20 m EPSG:27700 grid across UTM zones 30 and 31 → the reference
   adjustment → exact statistics per small area);
4. writes under demo_out/ the scenes, the screening, the mask, the probability rasters (raw,
   neighbourhood, adjusted) with their counts and spread, small_areas.gpkg, small_areas.csv and a
   PNG map with legend rendered by QGIS, and prints the reference product per small area beside
   the archive's truth, with what each stage does to the error.
"""
from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / ".build"
OUT = ROOT / "demo_out"


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
    from devpaths import ensure_plugin_importable

    ensure_plugin_importable()
    import servers
    from cloud_probability.sampledata.sample_archive import SampleSpec, generate

    t0 = time.monotonic()
    archive = generate(BUILD / "sample-small", SampleSpec.small())
    info = json.loads((archive / "archive.json").read_text())
    print(f"Sample archive: {archive} ({info['items']} items, {info['datatakes']} datatakes) "
          f"in {time.monotonic() - t0:.1f} s")
    OUT.mkdir(exist_ok=True)
    scenes_path = OUT / "scenes.gpkg"
    for old in ("scenes.gpkg", "screened.gpkg", "cloud_mask.tif", "probability.tif", "valid.tif", "cloudy.tif",
                "spread.tif", "probability_smoothed.tif", "probability_adjusted.tif", "small_areas.gpkg",
                "small_areas.csv", "small_areas.png", "probability_adjusted.regression.json"):
        if (OUT / old).exists():
            (OUT / old).unlink()
    xmin, ymin, xmax, ymax = info["aoi_27700"]
    with servers.SampleServers(archive, BUILD / "demo-servers") as running:
        print(f"STAC API {running.stac.url}   COGs {running.cogs.url}")
        report, elapsed = _run("cloudprob:searchscenes", [
            f"STAC_URL={running.stac.url}", "COLLECTION=sentinel-2-c1-l2a",
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
        mask_path = OUT / "cloud_mask.tif"
        ranked = gpd.read_file(scenes_path).sort_values("scene_cloud")
        half_cloudy = ranked.iloc[len(ranked) // 2]  # a scene with clouds, shadows and clear ground
        mask, mask_s = _run("cloudprob:cloudmask", [
            f"SCENES={scenes_path}", f"SCENE_ID={half_cloudy['item_id']}", f"OUTPUT={mask_path}",
        ])
        if mask is None:
            return 1
        zones = archive / "zones" / "small_areas.gpkg"
        model, model_s = _run("cloudprob:annualcloudprobability", [
            f"STAC_URL={running.stac.url}", "COLLECTION=sentinel-2-c1-l2a", f"AOI={xmin},{xmax},{ymin},{ymax} [EPSG:27700]",
            "START_DATE=2024-01-01", "END_DATE=2024-12-31", f"ZONES={zones}|layername=small_areas", "ZONE_ID_FIELD=code",
            "TARGET_CRS=EPSG:27700", "RESOLUTION=20",
            f"frequency:PROBABILITY={OUT / 'probability.tif'}", f"frequency:VALID={OUT / 'valid.tif'}",
            f"frequency:CLOUDY={OUT / 'cloudy.tif'}", f"frequency:SPREAD={OUT / 'spread.tif'}",
            f"smoothing:SMOOTHED={OUT / 'probability_smoothed.tif'}",
            f"smoothing:ADJUSTED={OUT / 'probability_adjusted.tif'}", f"zonal:SMALL_AREAS={OUT / 'small_areas.gpkg'}",
            f"zonal:SMALL_AREAS_CSV={OUT / 'small_areas.csv'}",
        ])
        if model is None:
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

    from cloud_probability.core.zonal import zonal_statistics

    with rasterio.open(OUT / "valid.tif") as ds:
        valid = ds.read(1)
    regression = json.loads((OUT / "probability_adjusted.regression.json").read_text())
    print(f"Ran cloudprob:annualcloudprobability, the reference product (Collection 1 → mean of the 'cloud' "
          f"probability → reference adjustment → per small area) in {model_s:.1f} s: "
          f"{valid.shape[1]} × {valid.shape[0]} px at 20 m on EPSG:27700 across UTM 30/31, "
          f"{valid.min()}–{valid.max()} acquisitions per pixel")
    print(f"  adjustment: p = {regression['intercept']:.3f} + {regression['slope']:+.4f} × d', median deviation "
          f"{regression['median_deviation_pct']:+.3f} %, R² {regression['r2']:.3f}; {regression['shifted']} of "
          f"{regression['pixels']} pixels deviate more than {regression['threshold_pct']:g} % from their neighbourhood")
    zones = gpd.read_file(archive / "zones" / "small_areas.gpkg", layer="small_areas")
    rows = list(csv.DictReader(open(archive / "truth" / "small_areas_truth.csv")))
    truth = {r["code"]: float(r["true_mean_cloud_prob_pct"]) for r in rows}
    product = gpd.read_file(OUT / "small_areas.gpkg", layer="small_areas")
    true = np.array([truth[c] for c in product["code"]])
    inside = (product["probability_ci95_low"] <= true) & (true <= product["probability_ci95_high"])
    print("  the reference product per small area beside the truth (percent; first 8 of "
          f"{len(product)}):")
    print("    code        mean  median   min    max  stdev  acquisitions   95 % interval     truth")
    for _, r in product.head(8).iterrows():
        print(f"    {r['code']}  {r['probability_mean']:5.1f}  {r['probability_median']:5.1f}  "
              f"{r['probability_min']:5.1f}  {r['probability_max']:5.1f}  {r['probability_stdev']:4.1f}  "
              f"{r['acquisition_count_mean']:7.1f}       {r['probability_ci95_low']:5.1f} – "
              f"{r['probability_ci95_high']:5.1f}   {truth[r['code']]:5.1f}")
    print(f"  the 95 % interval holds the truth for {int(inside.sum())} of {len(product)} areas "
          f"(median width {np.median(product['probability_ci95_high'] - product['probability_ci95_low']):.1f} points)")
    print("  error of each stage per small area against the truth (percentage points):")
    for name, path in (("raw", "probability.tif"), ("neighbourhood", "probability_smoothed.tif"),
                       ("adjusted", "probability_adjusted.tif")):
        table = zonal_statistics(str(OUT / path), zones, "code").table
        err = table["probability_mean"].values - np.array([truth[c] for c in table["code"]])
        print(f"    {name:13s} RMSE {np.sqrt(np.nanmean(err ** 2)):5.2f}   bias {np.nanmean(err):+5.2f}   "
              f"spread {np.nanstd(err):5.2f}")
    print("  (the bias is the archive's designed orbit-overlap artefact, uniform over 46 % of the areas, plus this"
          " year's clouds: see docs/development.md, 'The sample archive')")
    render = subprocess.run([sys.executable, str(ROOT / "scripts" / "render_map.py"), str(OUT / "small_areas.gpkg"),
                             str(OUT / "small_areas.png"), "--place", "Greenwich, London (sample archive)",
                             "--start", "2024-01-01", "--end", "2024-12-31", "--measure", "mean"],
                            capture_output=True, text=True)
    if render.returncode != 0:
        print(render.stderr[-2000:], file=sys.stderr)
        return 1
    rows = (OUT / "small_areas.csv").read_text().splitlines()
    print(f"Wrote demo_out/small_areas.gpkg and small_areas.csv ({len(rows) - 1} areas: {rows[0][:90]}…), "
          f"demo_out/small_areas.png (map with legend), and the probability rasters.")
    print("Open demo_out/ in QGIS, or run any cloudprob algorithm with scripts/qgis_process.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
