"""Acquisition-weighted smoothing of the cloud probability and its regression adjustment.

smoothed = K∗cloudy / K∗valid (percent): pixels with more acquisitions weigh more and
pixels without data weigh nothing; beyond the raster's edge is no data, never mirrored. The
box kernel is a running mean (scipy's uniform_filter) and the Gaussian kernel three box
passes (its standard approximation), so the time per pixel does not depend on the kernel
size. Rasters are worked in strips with a halo of the kernel's reach, so memory is bounded
on national grids.

The adjustment regresses the smoothed probability on artefact covariates — the smoothed
valid-observation count (which carries the orbit-overlap pattern) and optional user rasters
such as an urban fraction — by ordinary least squares, and removes the explained part while
keeping the mean: adjusted = smoothed − (X − mean X)·β, clipped to 0–100.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field

import numpy as np

from .progress import NullProgress, Progress, check_cancel

NODATA = -9999.0


@dataclass
class Regression:
    """The fitted adjustment: names, coefficients (percent per unit), R², pixels used."""

    names: list[str]
    coefficients: list[float]
    intercept: float
    r2: float
    pixels: int
    means: list[float]
    mean_before: float
    mean_after: float = float("nan")
    extra: dict = field(default_factory=dict)


def box_sizes_for_gaussian(sigma: float, passes: int = 3) -> list[int]:
    """Odd box widths whose successive means approximate a Gaussian of ``sigma`` pixels
    (Kovesi's construction: the variances of the boxes add up to sigma²)."""
    ideal = math.sqrt(12.0 * sigma * sigma / passes + 1.0)
    lower = int(math.floor(ideal))
    if lower % 2 == 0:
        lower -= 1
    upper = lower + 2
    m = round((12.0 * sigma * sigma - passes * lower * lower - 4 * passes * lower - 3 * passes) / (-4 * lower - 4))
    return [lower if i < m else upper for i in range(passes)]


def kernel_reach(size: int, shape: str) -> int:
    """How many pixels a kernel reaches from its centre (the halo strips need)."""
    if shape == "box":
        return size // 2
    sigma = size / 6.0  # a Gaussian truncated at ±3σ spans the kernel size
    return sum(b // 2 for b in box_sizes_for_gaussian(sigma))


def convolve(array: np.ndarray, size: int, shape: str = "box") -> np.ndarray:
    """K∗array with zeros beyond the edges (float64): box of ``size`` pixels, or a Gaussian
    whose ±3σ spans ``size`` pixels (three box passes)."""
    from scipy.ndimage import uniform_filter

    a = array.astype(np.float64, copy=False)
    if shape == "box":
        return uniform_filter(a, size=size, mode="constant", cval=0.0)
    if shape == "gaussian":
        for width in box_sizes_for_gaussian(size / 6.0):
            a = uniform_filter(a, size=width, mode="constant", cval=0.0)
        return a
    raise ValueError(f"unknown kernel shape {shape!r} (box or gaussian)")


def smooth_arrays(cloudy: np.ndarray, valid: np.ndarray, size: int = 21, shape: str = "box"):
    """(smoothed probability in percent with NaN where K∗valid = 0, K∗valid in observations)."""
    kc = convolve(cloudy, size, shape)
    kv = convolve(valid, size, shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        smoothed = np.where(kv > 1e-9, 100.0 * kc / kv, np.nan)
    return smoothed, kv


def smooth_probability(
    cloudy_path: str,
    valid_path: str,
    out_smoothed: str,
    out_adjusted: str | None = None,
    size: int = 21,
    shape: str = "box",
    covariates: list[str] | None = None,
    adjust: bool = True,
    strip_rows: int = 1024,
    progress: Progress | None = None,
) -> Regression | None:
    """Smooth the counts of cloudprob:cloudfrequency and, with ``adjust``, remove the part of
    the smoothed probability explained by the covariates. Writes GeoTIFFs (float32 percent,
    no data −9999) and, for the adjustment, a JSON file beside ``out_adjusted``.

    Covariates must be on the counts' grid (same size, transform and CRS).
    """
    import rasterio
    from rasterio.windows import Window

    progress = progress or NullProgress()
    if size < 1 or size % 2 == 0:
        raise ValueError("The kernel size must be an odd number of pixels (e.g. 21).")
    covariates = list(covariates or [])
    with rasterio.open(cloudy_path) as dc, rasterio.open(valid_path) as dv:
        if (dc.width, dc.height, dc.transform, dc.crs) != (dv.width, dv.height, dv.transform, dv.crs):
            raise ValueError("The cloudy and valid count rasters are not on the same grid.")
        profile = dict(driver="GTiff", width=dc.width, height=dc.height, count=1, dtype="float32", crs=dc.crs,
                       transform=dc.transform, nodata=NODATA, compress="DEFLATE", predictor=3, BIGTIFF="IF_SAFER")
        if dc.width >= 256 and dc.height >= 256:
            profile.update(tiled=True, blockxsize=256, blockysize=256)
        height, width = dc.height, dc.width
    for path in covariates:
        with rasterio.open(path) as ds:
            if (ds.width, ds.height) != (width, height) or not np.allclose(tuple(ds.transform), tuple(profile["transform"])):
                raise ValueError(f"The covariate {os.path.basename(path)} is not on the counts' grid.")
    reach = kernel_reach(size, shape)
    strip_rows = max(strip_rows, 4 * reach)
    names = ["smoothed_valid_obs"] + [os.path.splitext(os.path.basename(p))[0] for p in covariates]
    k = len(names)
    xtx = np.zeros((k + 1, k + 1))
    xty = np.zeros(k + 1)
    yty = 0.0
    total = 0
    tmp_smoothed = f"{out_smoothed}.part-{os.getpid()}.tif"
    tmp_kv = f"{out_smoothed}.kv-{os.getpid()}.tif"
    written: list[str] = [tmp_smoothed, tmp_kv]
    try:
        kv_profile = dict(profile)
        with rasterio.open(cloudy_path) as dc, rasterio.open(valid_path) as dv, \
                rasterio.open(tmp_smoothed, "w", **profile) as out, rasterio.open(tmp_kv, "w", **kv_profile) as outkv:
            strips = list(range(0, height, strip_rows))
            for n, r0 in enumerate(strips):
                check_cancel(progress)
                r1 = min(height, r0 + strip_rows)
                h0, h1 = max(0, r0 - reach), min(height, r1 + reach)
                window = Window(0, h0, width, h1 - h0)
                # pad with zeros beyond the raster's top and bottom edges: no data, not mirrored
                cloudy = dc.read(1, window=window).astype(np.float64)
                valid = dv.read(1, window=window).astype(np.float64)
                smoothed, kv = smooth_arrays(cloudy, valid, size, shape)
                core = slice(r0 - h0, r0 - h0 + (r1 - r0))
                s, kvc = smoothed[core], kv[core]
                out.write(np.where(np.isnan(s), NODATA, s).astype(np.float32)[None], window=Window(0, r0, width, r1 - r0))
                outkv.write(kvc.astype(np.float32)[None], window=Window(0, r0, width, r1 - r0))
                if adjust:
                    x = [kvc]
                    for path in covariates:
                        with rasterio.open(path) as cov:
                            x.append(cov.read(1, window=Window(0, r0, width, r1 - r0)).astype(np.float64))
                    ok = ~np.isnan(s)
                    for a in x:
                        ok &= np.isfinite(a)
                    design = np.column_stack([np.ones(int(ok.sum()))] + [a[ok] for a in x])
                    y = s[ok]
                    xtx += design.T @ design
                    xty += design.T @ y
                    yty += float(y @ y)
                    total += int(ok.sum())
                progress.set_progress((50.0 if adjust else 95.0) * (n + 1) / len(strips))
        result = None
        if adjust and out_adjusted:
            result = _adjust(tmp_smoothed, tmp_kv, covariates, names, xtx, xty, yty, total, out_adjusted, profile,
                             strip_rows, progress)
        os.replace(tmp_smoothed, out_smoothed)
        written.remove(tmp_smoothed)
        progress.set_progress(100.0)
        return result
    finally:
        for path in written:
            if os.path.exists(path):
                os.remove(path)


def _adjust(smoothed_path, kv_path, covariates, names, xtx, xty, yty, total, out_adjusted, profile, strip_rows,
            progress) -> Regression:
    import rasterio
    from rasterio.windows import Window

    if total <= len(names) + 1:
        raise ValueError("Too few pixels with data to fit the adjustment.")
    beta, *_ = np.linalg.lstsq(xtx, xty, rcond=None)
    means = xtx[0, 1:] / total
    mean_y = xty[0] / total
    ss_tot = yty - total * mean_y**2
    ss_res = yty - 2 * beta @ xty + beta @ xtx @ beta
    r2 = float(1 - ss_res / ss_tot) if ss_tot > 0 else 0.0
    tmp = f"{out_adjusted}.part-{os.getpid()}.tif"
    height, width = profile["height"], profile["width"]
    total_after = 0.0
    try:
        with rasterio.open(smoothed_path) as ds, rasterio.open(kv_path) as dkv, rasterio.open(tmp, "w", **profile) as out:
            strips = list(range(0, height, strip_rows))
            for n, r0 in enumerate(strips):
                check_cancel(progress)
                r1 = min(height, r0 + strip_rows)
                window = Window(0, r0, width, r1 - r0)
                s = ds.read(1, window=window).astype(np.float64)
                x = [dkv.read(1, window=window).astype(np.float64)]
                for path in covariates:
                    with rasterio.open(path) as cov:
                        x.append(cov.read(1, window=window).astype(np.float64))
                explained = sum(b * (a - m) for b, a, m in zip(beta[1:], x, means))
                adjusted = np.clip(s - explained, 0.0, 100.0)
                nodata = s == NODATA
                for a in x:
                    nodata |= ~np.isfinite(a)
                total_after += float(adjusted[~nodata].sum())
                out.write(np.where(nodata, NODATA, adjusted).astype(np.float32)[None], window=window)
                progress.set_progress(50.0 + 45.0 * (n + 1) / len(strips))
        os.replace(tmp, out_adjusted)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    result = Regression(names, [float(b) for b in beta[1:]], float(beta[0]), r2, int(total), [float(m) for m in means],
                        float(mean_y), total_after / total)
    with open(os.path.splitext(out_adjusted)[0] + ".regression.json", "w") as fh:
        json.dump(asdict(result), fh, indent=1)
    return result
