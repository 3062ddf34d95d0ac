"""s2cloudless (Sentinel Hub's LightGBM cloud detector, optional package) on L1C bands.

The 10-band model needs B01, B02, B04, B05, B08, B8A, B09, B10, B11 and B12 as top-of-
atmosphere reflectance. From processing baseline 04.00 (January 2022) L1C digital numbers
carry an offset of 1000: reflectance = (DN − 1000) / 10000; before it, DN / 10000. An asset
that states ``raster:bands`` scale/offset is converted with those instead.
"""
from __future__ import annotations

import numpy as np

from .masks import CLEAR, CLOUD, NODATA, MaskError
from .catalogue import Href, catalogue_of
from .reading import Grid, read_on_grid
from .stac import Scene

BANDS = ("B01", "B02", "B04", "B05", "B08", "B8A", "B09", "B10", "B11", "B12")


def available() -> bool:
    """Whether the optional s2cloudless package can be imported."""
    import importlib.util

    return importlib.util.find_spec("s2cloudless") is not None


def _baseline_offset(scene: Scene) -> float:
    try:
        major = float(scene.processing_baseline or "0")
    except ValueError:
        major = 0.0
    return -1000.0 if major >= 4.0 else 0.0


def to_reflectance(dn: np.ndarray, scene: Scene, asset_key: str) -> np.ndarray:
    """Top-of-atmosphere reflectance (0–1) of an L1C band from its digital numbers."""
    asset = (scene.item.get("assets") or {}).get(asset_key) or {}
    bands = asset.get("raster:bands") or [{}]
    scale, offset = bands[0].get("scale"), bands[0].get("offset")
    if scale is not None:
        return dn.astype(np.float32) * float(scale) + float(offset or 0.0)
    return (dn.astype(np.float32) + _baseline_offset(scene)) / 10000.0


def _asset_key(scene: Scene, band: str) -> str | None:
    from .stac import BAND_CODE_TO_ASSET

    assets = scene.item.get("assets") or {}
    for key in (band, BAND_CODE_TO_ASSET.get(band, band), band.lower()):
        if key in assets:
            return key
    return None


def missing_bands(scene: Scene) -> list[str]:
    return [b for b in BANDS if _asset_key(scene, b) is None]


def detector_parameters(resolution: float) -> dict:
    """s2cloudless's recommended smoothing (4 px) and dilation (2 px) at 10 m, kept in metres."""
    return {"average_over": max(1, int(round(40.0 / resolution))), "dilation_size": max(1, int(round(20.0 / resolution)))}


def cloud_mask(reflectance: np.ndarray, valid: np.ndarray, threshold: float, resolution: float) -> tuple[np.ndarray, np.ndarray]:
    """(probability, mask) from reflectance (rows, cols, 10 bands in :data:`BANDS` order)."""
    if not available():
        raise MaskError("The s2cloudless mask needs the optional Python package 's2cloudless' (pip install s2cloudless==1.7.3).")
    from s2cloudless import S2PixelCloudDetector

    detector = S2PixelCloudDetector(threshold=threshold, all_bands=False, **detector_parameters(resolution))
    prob = detector.get_cloud_probability_maps(reflectance[np.newaxis, ...])[0]
    cloudy = detector.get_mask_from_prob(prob[np.newaxis, ...])[0].astype(bool)
    mask = np.where(cloudy, CLOUD, CLEAR).astype(np.uint8)
    mask[~valid] = NODATA
    return prob, mask


def scene_mask(scene: Scene, grid: Grid, threshold: float) -> np.ndarray:
    """The s2cloudless mask of an L1C ``scene`` on ``grid`` (bands resampled bilinearly)."""
    absent = missing_bands(scene)
    if absent:
        raise MaskError(
            f"Scene {scene.item_id} has no L1C band(s) {', '.join(absent)}; s2cloudless needs "
            f"{', '.join(BANDS)} (search the L1C collection, e.g. 'sentinel-2-l1c')."
        )
    layers, valid = [], np.ones(grid.shape, bool)
    for band in BANDS:
        key = _asset_key(scene, band)
        # the href remembers the scene's catalogue: checked against it and signed as it signs, like every read
        dn, ok = read_on_grid(Href(scene.item["assets"][key]["href"], catalogue_of(scene)), grid, resampling="bilinear")
        layers.append(np.clip(to_reflectance(dn, scene, key), 0.0, None))
        valid &= ok & (dn > 0)
    reflectance = np.stack(layers, axis=-1)
    return cloud_mask(reflectance, valid, threshold, grid.resolution)[1]
