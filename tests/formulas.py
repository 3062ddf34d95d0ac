"""Independent transcriptions of the published formulas, in numpy and scipy alone (nothing of the
plugin), for tests to compare the plugin's outputs with. Each is checked against hand computations
or plain loops in the tests that use it.

The reference product's adjustment (DESIGN.md, "Method"):

    lag = K0∗(p·n) / K0∗n        K0 = 21×21 ones, centre 0, zeros beyond the edges
    d = 100·(p − lag)/lag,  m = median(d),  d' = d if |d| > T else m  (T = 5)
    OLS p = a + b·d',  adjusted = p − b·(d' − m)  (= p where d is undefined)

The alternative smoothing (core/smoothing.py's documented method, and the smoothprobability
algorithm's help):

    smoothed = 100·K∗cloudy / K∗valid   K = size×size ones, zeros beyond the edges (no data where K∗valid = 0)
    OLS smoothed = a + Σ βⱼ·Xⱼ over the pixels where smoothed and every X are defined,
        X = (K∗valid, the covariate rasters)
    adjusted = clip(smoothed − Σ βⱼ·(Xⱼ − mean Xⱼ), 0, 100)

Zonal statistics weight each cell by the share of it inside the zone (exact polygon geometry).
"""
from __future__ import annotations

import numpy as np
from scipy.ndimage import convolve

KERNEL = 21
THRESHOLD = 5.0


def k0(size: int = KERNEL) -> np.ndarray:
    kernel = np.ones((size, size))
    kernel[size // 2, size // 2] = 0.0
    return kernel


def neighbourhood_mean(p: np.ndarray, n: np.ndarray, size: int = KERNEL) -> np.ndarray:
    """lag = K0∗(p·n) / K0∗n, NaN where K0∗n = 0; ``p`` may be NaN where ``n`` is 0."""
    n = n.astype(np.float64)
    weighted = np.where(n > 0, np.nan_to_num(p) * n, 0.0)
    num = convolve(weighted, k0(size), mode="constant", cval=0.0)
    den = convolve(n, k0(size), mode="constant", cval=0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def reference(p: np.ndarray, n: np.ndarray, size: int = KERNEL, threshold: float = THRESHOLD) -> dict:
    """The whole adjustment for probability ``p`` (%, NaN = no data) with counts ``n``."""
    p = np.where(n > 0, p, np.nan).astype(np.float64)
    lag = neighbourhood_mean(p, n, size)
    defined = np.isfinite(p) & np.isfinite(lag) & (lag != 0)
    d = np.full(p.shape, np.nan)
    d[defined] = 100.0 * (p[defined] - lag[defined]) / lag[defined]
    out = {"p": p, "lag": lag, "d": d, "defined": defined, "adjusted": p.copy()}
    if not defined.any():
        return out
    m = float(np.median(d[defined]))
    shifted = defined & (np.abs(d) > threshold)
    dp = np.where(shifted, d, m)
    x, y = dp[defined], p[defined]
    (a, b), *_ = np.linalg.lstsq(np.column_stack([np.ones_like(x), x]), y, rcond=None)
    residual = y - (a + b * x)
    r2 = 1.0 - (residual @ residual) / ((y - y.mean()) @ (y - y.mean()))
    out["adjusted"] = np.where(defined, p - b * (dp - m), p)
    out.update(m=m, a=float(a), b=float(b), r2=float(r2), pixels=int(defined.sum()), shifted=int(shifted.sum()), dprime=dp)
    return out


# --- the alternative smoothing ------------------------------------------------------------------

def box_sum(a: np.ndarray, size: int = KERNEL) -> np.ndarray:
    """Σ of ``a`` over the size × size window around each cell, zeros beyond the edges."""
    return convolve(np.asarray(a, np.float64), np.ones((size, size)), mode="constant", cval=0.0)


def covariate_smoothing(cloudy: np.ndarray, valid: np.ndarray, covariates=(), size: int = KERNEL) -> dict:
    """The smoothed and adjusted probability (percent, NaN = no data) of counts ``cloudy`` and
    ``valid`` with covariate arrays (NaN = no data), and the fit."""
    kc, kv = box_sum(cloudy, size), box_sum(valid, size)
    with np.errstate(invalid="ignore", divide="ignore"):
        smoothed = np.where(kv > 0, 100.0 * kc / kv, np.nan)
    x = [kv] + [np.asarray(c, np.float64) for c in covariates]
    ok = np.isfinite(smoothed)
    for a in x:
        ok &= np.isfinite(a)
    design = np.column_stack([np.ones(int(ok.sum()))] + [a[ok] for a in x])
    beta, *_ = np.linalg.lstsq(design, smoothed[ok], rcond=None)
    explained = sum(b * (a - a[ok].mean()) for b, a in zip(beta[1:], x))
    adjusted = np.where(ok, np.clip(smoothed - explained, 0.0, 100.0), np.nan)
    return {"smoothed": smoothed, "adjusted": adjusted, "beta": beta, "pixels": int(ok.sum())}


# --- zonal statistics -----------------------------------------------------------------------------

def cell_weights(zone, transform, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, cols, share of each cell's area inside ``zone``) for the cells the zone touches,
    by intersecting every cell of the zone's bounding box with it (GEOS)."""
    import math

    from shapely.geometry import box

    inverse = ~transform
    xmin, ymin, xmax, ymax = zone.bounds
    c0, r0 = inverse * (xmin, ymax)
    c1, r1 = inverse * (xmax, ymin)
    rows, cols, shares = [], [], []
    for r in range(max(0, math.floor(r0)), min(shape[0], math.ceil(r1))):
        for c in range(max(0, math.floor(c0)), min(shape[1], math.ceil(c1))):
            x0, y0 = transform * (c, r)
            x1, y1 = transform * (c + 1, r + 1)
            cell = box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
            share = cell.intersection(zone).area / cell.area
            if share > 0:
                rows.append(r)
                cols.append(c)
                shares.append(share)
    return np.array(rows, int), np.array(cols, int), np.array(shares)


def weighted_mean(values: np.ndarray, zone, transform, nodata=None) -> tuple[float, float]:
    """(the area-weighted mean of ``values`` over ``zone``, Σ of the weights), cells without
    data left out; (NaN, 0) when none has data."""
    rows, cols, shares = cell_weights(zone, transform, values.shape)
    v = values[rows, cols].astype(np.float64)
    has = np.isfinite(v) if nodata is None else np.isfinite(v) & (v != nodata)
    if not has.any():
        return float("nan"), 0.0
    return float((v[has] * shares[has]).sum() / shares[has].sum()), float(shares[has].sum())


def exactextract_median(values, weights=None) -> float:
    """The median as exactextract computes it (its ``WeightedQuantiles``, src/weighted_quantiles.cpp,
    transcribed): equal values are merged into one element with the sum of their weights
    (coverage fractions); with the elements sorted by value, x_1 < … < x_n with weights w_i and
    C_i = w_1 + … + w_(i−1), s_i = (i − 1)·w_i + (n − 1)·C_i; h = s_n / 2; the median is x where
    s reaches h, interpolated linearly in s between the two elements around it (x_n when h = s_n).
    [1, 1, 2] with equal weights gives 1.5; equal weights over distinct values give numpy's median."""
    v = np.asarray(values, float).ravel()
    w = np.ones_like(v) if weights is None else np.asarray(weights, float).ravel()
    keep = (w > 0) & np.isfinite(v)
    x, inverse = np.unique(v[keep], return_inverse=True)
    if not len(x):
        return float("nan")
    wx = np.bincount(inverse, weights=w[keep])
    n = len(x)
    cum = np.concatenate([[0.0], np.cumsum(wx)[:-1]])
    s = np.arange(n) * wx + (n - 1) * cum
    h = 0.5 * s[-1]
    right = int(np.searchsorted(s, h, side="right"))
    if right >= n:
        return float(x[-1])
    left = right - 1
    return float(x[left] + (h - s[left]) * (x[right] - x[left]) / (s[right] - s[left]))
