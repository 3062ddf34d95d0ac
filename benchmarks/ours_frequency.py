"""Our side of the frequency benchmark, in its own process so its peak memory is its own:

    python ours_frequency.py ITEMS.json XMIN YMIN XMAX YMAX EPSG RESOLUTION THREADS OUTDIR

Prints one JSON line: seconds, peak memory (VmHWM, see peak_memory.py), acquisitions, pixel-observations.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ensure_plugin_importable  # noqa: E402
from peak_memory import peak_rss_mb  # noqa: E402

ensure_plugin_importable()

from cloud_probability.core.frequency import cloud_frequency, grid_for_area  # noqa: E402
from cloud_probability.core.masks import PRESETS  # noqa: E402
from cloud_probability.core.stac import normalise_item  # noqa: E402


TILE = int(__import__("os").environ.get("CLOUDPROB_TILE", "2048"))


def main() -> None:
    items_path, xmin, ymin, xmax, ymax, epsg, res, threads, outdir = sys.argv[1:10]
    scenes = [normalise_item(i) for i in json.load(open(items_path))["features"]]
    grid = grid_for_area((float(xmin), float(ymin), float(xmax), float(ymax)), f"EPSG:{epsg}", float(res))
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    outputs = {k: str(out / f"{k}.tif") for k in ("probability", "valid", "cloudy")}
    t0 = time.monotonic()
    result = cloud_frequency(scenes, grid, PRESETS["scl"], outputs, concurrency=int(threads), tile_px=TILE,
                             cache_dir=tempfile.mkdtemp(prefix="cloudprob-bench-cache-"))
    print(json.dumps({
        "seconds": time.monotonic() - t0, "peak_rss_mb": peak_rss_mb(),
        "acquisitions": result.acquisitions, "pixel_observations": result.pixel_observations,
        "bytes": result.bytes_fetched, "tiles": result.tiles,
    }))


if __name__ == "__main__":
    main()
