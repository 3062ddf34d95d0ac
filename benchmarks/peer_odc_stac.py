"""The peer of the frequency benchmark, run in its own virtual environment (.build/peer-venv:
odc-stac with numpy 2 and its own rasterio/GDAL): what a Python user would write instead —
load the same STAC items from the same HTTP server into xarray with odc-stac (one layer per
solar day, items of a day fused) and count valid and cloudy observations with numpy.

    python peer_odc_stac.py ITEMS.json XMIN YMIN XMAX YMAX EPSG RESOLUTION THREADS OUT.npz   (THREADS 0: default)

Prints one JSON line: seconds, peak memory (VmHWM, see peak_memory.py), acquisitions.
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np
from peak_memory import peak_rss_mb


def main() -> None:
    items_path, xmin, ymin, xmax, ymax, epsg, res, threads, out = sys.argv[1:10]
    import pystac
    from odc.geo.geobox import GeoBox
    from odc.stac import load

    items = [pystac.Item.from_dict(d) for d in json.load(open(items_path))["features"]]
    geobox = GeoBox.from_bbox((float(xmin), float(ymin), float(xmax), float(ymax)), crs=f"EPSG:{epsg}",
                              resolution=float(res))
    t0 = time.monotonic()
    pool = int(threads) or None  # 0: odc-stac's default, one item at a time
    ds = load(items, bands=["scl"], geobox=geobox, groupby="solar_day", resampling="nearest", pool=pool)
    scl = ds["scl"].values  # (time, y, x) uint8, 0 = no data
    valid = (scl > 1).sum(axis=0, dtype=np.uint16)
    cloudy = np.isin(scl, (8, 9, 10)).sum(axis=0, dtype=np.uint16)
    seconds = time.monotonic() - t0
    np.savez_compressed(out, valid=valid, cloudy=cloudy)
    print(json.dumps({
        "seconds": seconds, "peak_rss_mb": peak_rss_mb(),
        "acquisitions": int(scl.shape[0]), "shape": list(valid.shape),
    }))


if __name__ == "__main__":
    main()
