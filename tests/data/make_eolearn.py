"""Write tests/data/eolearn_testeopatch/ from eo-learn's TestEOPatch, losslessly and smaller.

``python tests/data/make_eolearn.py SOURCE`` where SOURCE holds eo-learn's ``example_data``
(``TestEOPatch/`` and ``REFERENCE_SCENES.npy``, sentinel-hub/eo-learn commit 303e7585). Only
what the tests read is kept; every array comes back bit for bit (checked here before writing):

* ``masks.npz``: ``CLM`` (68, 101, 100) uint8, ``CLOUD_COVERAGE`` (68,) float16 and
  ``VALID_COUNT`` (101, 100) int64 — the .npy arrays without their trailing band axis;
* ``CLP.tif``: ``data/CLP.npy`` (68 dates of float32 s2cloudless probability) as a 68-band
  GeoTIFF on the patch's grid (EPSG:32633, ``bbox.geojson``), DEFLATE with the floating-point
  predictor: 1.7 MB instead of 2.7 MB;
* ``REFERENCE_SCENES_DN.npz``: ``REFERENCE_SCENES.npy`` (5, 101, 100, 13) float32 reflectance
  stored as the digital numbers it was made from, uint16 round(reflectance × 10000);
  ``dn / np.float32(10000)`` gives back the same float32 values.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "eolearn_testeopatch"


def main(source: Path) -> None:
    import rasterio
    from rasterio.transform import from_bounds

    base = source / "TestEOPatch"
    clm = np.load(base / "mask" / "CLM.npy")[..., 0]
    coverage = np.load(base / "scalar" / "CLOUD_COVERAGE.npy")[:, 0]
    valid = np.load(base / "mask_timeless" / "VALID_COUNT.npy")[..., 0]
    clp = np.load(base / "data" / "CLP.npy")[..., 0]
    reference = np.load(source / "REFERENCE_SCENES.npy")
    dn = np.round(reference.astype(np.float64) * 10000).astype(np.uint16)
    assert np.array_equal(dn / np.float32(10000), reference), "REFERENCE_SCENES is not DN / 10000"

    coords = json.loads((base / "bbox.geojson").read_text())["coordinates"][0]
    xs, ys = [c[0] for c in coords], [c[1] for c in coords]
    dates, rows, cols = clp.shape
    OUT.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT / "masks.npz", CLM=clm, CLOUD_COVERAGE=coverage, VALID_COUNT=valid)
    np.savez_compressed(OUT / "REFERENCE_SCENES_DN.npz", DN=dn)
    profile = dict(driver="GTiff", width=cols, height=rows, count=dates, dtype="float32", crs="EPSG:32633",
                   transform=from_bounds(min(xs), min(ys), max(xs), max(ys), cols, rows), compress="DEFLATE",
                   predictor=3, zlevel=9, interleave="band")
    with rasterio.open(OUT / "CLP.tif", "w", **profile) as dst:
        dst.write(clp)
    with rasterio.open(OUT / "CLP.tif") as src:
        assert np.array_equal(src.read(), clp)
    with np.load(OUT / "masks.npz") as m:
        assert np.array_equal(m["CLM"], clm) and np.array_equal(m["VALID_COUNT"], valid)
        assert np.array_equal(m["CLOUD_COVERAGE"], coverage) and m["CLOUD_COVERAGE"].dtype == coverage.dtype
    for name in ("bbox.geojson", "timestamps.json"):  # copied as they are
        (OUT / name).write_bytes((base / name).read_bytes())


if __name__ == "__main__":
    main(Path(sys.argv[1]))
