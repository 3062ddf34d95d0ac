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

Both adjustments fit their regression over every pixel of the rasters they are given, i.e. over
the extent of the run that made the counts: another extent gives another fit, and moves every
adjusted value a little. ``fit_from`` (a previous run's ``.regression.json``) applies that run's
fit instead of fitting, so runs over different extents adjust the same way and agree where their
neighbourhoods overlap.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import asdict, dataclass, field

import numpy as np

from .cache import remove_stale_parts
from .progress import NullProgress, Progress
from .rasters import NODATA as RASTER_NODATA, atomic, geotiff_profile

NODATA = RASTER_NODATA["float32"]
# the GeoTIFF tag on the published variant's outputs: "1" (its band-1 rows, the probability) or "2"
# (its band-2 rows, which the published table calls acquisition_count_* but are no count)
PUBLISHED_TAG = "CLOUDPROB_PUBLISHED_2024_BAND"


class FitError(ValueError):
    """A fit to reuse (``fit_from``) that cannot be used here; the message says why."""


def load_fit(fit_from, method: str) -> dict:
    """A previous run's fit from its ``.regression.json`` (a path, or the dict already read), checked
    to be of ``method`` ("reference": intercept, slope, median_deviation_pct, kernel_size,
    threshold_pct; "counts": names, coefficients, intercept, means)."""
    if isinstance(fit_from, dict):
        fit, where = fit_from, "the fit given"
    else:
        where = os.path.basename(str(fit_from))
        try:
            with open(fit_from) as fh:
                fit = json.load(fh)
        except OSError as exc:
            raise FitError(f"Cannot read the fit to reuse, {fit_from}: {exc.strerror or exc}.") from exc
        except ValueError as exc:
            raise FitError(f"The fit to reuse, {fit_from}, is not JSON ({exc}).") from exc
    deviation_keys = ("intercept", "slope", "median_deviation_pct", "kernel_size", "threshold_pct")
    keys = {"reference": deviation_keys, "published": deviation_keys,
            "counts": ("names", "coefficients", "intercept", "means")}[method]
    other = "counts" if method != "counts" else "reference"
    if isinstance(fit, dict) and method != "counts" and all(k in fit for k in keys):
        # the documented and the published deviation fits have the same keys: the report names its method
        made = next((m for m, text in _REPORT_METHOD.items() if fit.get("method") == text), "reference")
        if made != method:
            raise FitError(f"{where} holds a fit of the other method ('{_METHOD_NAMES[made]}'); this run uses "
                           f"'{_METHOD_NAMES[method]}': reuse a fit made with the same method.")
    if not isinstance(fit, dict) or not all(k in fit for k in keys):
        marker = {"reference": "slope", "counts": "coefficients"}[other]
        if isinstance(fit, dict) and marker in fit:
            raise FitError(f"{where} holds a fit of the other method ('{_METHOD_NAMES[other]}'); this run uses "
                           f"'{_METHOD_NAMES[method]}': reuse a fit made with the same method.")
        raise FitError(f"{where} is not a .regression.json of the '{_METHOD_NAMES[method]}' method "
                       f"(it needs {', '.join(keys)}).")
    return fit


_METHOD_NAMES = {"reference": "Reference: deviation from the acquisition-weighted neighbourhood",
                 "published": "As published (2024 release): deviation pooled over both bands",
                 "counts": "Smoothed counts, regression on covariates"}
_REPORT_METHOD = {"reference": "reference: deviation from the acquisition-weighted neighbourhood",
                  "published": "published 2024 release: lag on the deviation pooled over both bands"}
_REPORT_FORMULA = {"reference": "adjusted = p - slope * (d' - median_deviation_pct)",
                   "published": "adjusted = lag - slope * (d' - median_deviation_pct), d = 100 (lag - x) / x, "
                                "x = p (band 1, adjusted) or n (band 2, adjusted_count)"}


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
    fit_from: str | None = None  # the .regression.json whose fit was applied instead of fitting


# strips worked at once in this process: SciPy's filters and NumPy's arithmetic release the GIL,
# so two strips take about the time of one on two cores; memory is about this × ``memory_mb``
LOCAL_THREADS = max(1, min(4, os.cpu_count() or 1))

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


def describe_band(dataset, what: str, units: str) -> None:
    """Say in the raster itself what its band holds and in which unit: QGIS shows it in the
    layer's legend and properties (an undescribed band read "Band 1 (Gray)")."""
    dataset.set_band_description(1, f"{what} ({units})")
    dataset.update_tags(1, units=units)


def check_count_rasters(cloudy_path: str, valid_path: str, covariates=()) -> None:
    """Raise ValueError unless the counts, and the covariates when given, lie on one grid
    (size, transform and CRS, exactly): what every method checks before it writes anything."""
    import rasterio

    profile = _output_profile(cloudy_path, valid_path)
    for path in covariates:
        with rasterio.open(path) as ds:
            if (ds.width, ds.height, tuple(ds.transform), ds.crs) != \
                    (profile["width"], profile["height"], tuple(profile["transform"]), profile["crs"]):
                raise ValueError(f"The covariate {os.path.basename(path)} is not on the counts' grid (size, transform and CRS).")


def _output_profile(cloudy_path: str, valid_path: str) -> dict:
    """The outputs' GeoTIFF profile (float32 percent, no data −9999) on the counts' grid, after
    checking that both counts are on one grid (size, transform and CRS, exactly)."""
    import rasterio

    from .reading import Grid

    with rasterio.open(cloudy_path) as dc, rasterio.open(valid_path) as dv:
        if (dc.width, dc.height, tuple(dc.transform), dc.crs) != (dv.width, dv.height, tuple(dv.transform), dv.crs):
            raise ValueError("The cloudy and valid count rasters are not on the same grid (size, transform and CRS).")
        return geotiff_profile(Grid(dc.crs, dc.transform, (dc.height, dc.width)), "float32", 1, NODATA)


def smooth_probability(
    cloudy_path: str,
    valid_path: str,
    out_smoothed: str,
    out_adjusted: str | None = None,
    size: int = 21,
    shape: str = "box",
    covariates: list[str] | None = None,
    adjust: bool = True,
    strip_rows: int | None = None,
    progress: Progress | None = None,
    memory_mb: float = 400.0,
    scheduler=None,
    fit_from=None,
) -> Regression | None:
    """Smooth the counts of cloudprob:cloudfrequency and, with ``adjust``, remove the part of
    the smoothed probability explained by the covariates. Writes GeoTIFFs (float32 percent,
    no data −9999) and, for the adjustment, a JSON file beside ``out_adjusted``.

    Covariates must be on the counts' grid (same size, transform and CRS). ``scheduler`` runs
    the strips as Dask tasks (reading the rasters by path); the sums are added in strip order,
    so the outputs are the same bit for bit.

    The fit is made over every pixel of these rasters (the extent of the run that made them).
    ``fit_from``, a previous run's ``.regression.json`` of this method, applies its intercept,
    coefficients and covariate means instead (the covariates must be the same, by name); the
    mean is then kept only as far as this extent resembles that one. R² is that fit's on these
    pixels.
    """
    import rasterio
    from rasterio.windows import Window

    progress = progress or NullProgress()
    remove_stale_parts(out_smoothed, out_adjusted)  # left by a run killed while writing
    if size < 1 or size % 2 == 0:
        raise ValueError("The kernel size must be an odd number of pixels (e.g. 21).")
    covariates = list(covariates or [])
    profile = _output_profile(cloudy_path, valid_path)
    height, width = profile["height"], profile["width"]
    for path in covariates:
        with rasterio.open(path) as ds:
            if (ds.width, ds.height, tuple(ds.transform), ds.crs) != (width, height, tuple(profile["transform"]), profile["crs"]):
                raise ValueError(f"The covariate {os.path.basename(path)} is not on the counts' grid (size, transform and CRS).")
    reach = kernel_reach(size, shape)
    # strips of the full width sized by the memory budget (about 10 float64 arrays of a strip)
    strip_rows = max(strip_rows, 4 * reach) if strip_rows else _strip_rows_for(width, reach, memory_mb)
    strips = list(_strips(height, strip_rows, reach))
    names = ["smoothed_valid_obs"] + [os.path.splitext(os.path.basename(p))[0] for p in covariates]
    fixed = None
    if fit_from is not None and adjust:
        fixed = load_fit(fit_from, "counts")
        if list(fixed["names"]) != names:
            raise FitError(f"The fit to reuse was made on the covariates {', '.join(fixed['names'])}; this run has "
                           f"{', '.join(names)}: give the same covariate rasters (by name), or no fit to reuse.")
        fixed = dict(fixed, fit_from=None if isinstance(fit_from, dict) else str(fit_from))
    k = len(names)
    xtx = np.zeros((k + 1, k + 1))
    xty = np.zeros(k + 1)
    yty = 0.0
    total = 0
    tmp_kv = f"{out_smoothed}.kv-{os.getpid()}.tif"  # scratch: K∗valid, the adjustment's covariate
    from .executor import executor_for

    executor = executor_for(scheduler, local_threads=LOCAL_THREADS)
    try:
        with contextlib.ExitStack() as files:
            # the smoothed raster is renamed into place only once the adjustment is written too
            tmp_smoothed = files.enter_context(atomic(out_smoothed))
            jobs = [(str(cloudy_path), str(valid_path), covariates, size, shape, width, bounds, adjust) for bounds in strips]
            with rasterio.open(tmp_smoothed, "w", **profile) as out, rasterio.open(tmp_kv, "w", **profile) as outkv:
                describe_band(out, "smoothed cloud probability, acquisition-weighted", "percent")
                for n, part in executor.map(_counts_strip, jobs, progress):
                    r0, r1 = strips[n][:2]
                    out.write(part["smoothed"][None], window=Window(0, r0, width, r1 - r0))
                    outkv.write(part["kv"][None], window=Window(0, r0, width, r1 - r0))
                    if adjust:  # added in strip order, wherever the strip ran
                        xtx += part["xtx"]
                        xty += part["xty"]
                        yty += part["yty"]
                        total += part["total"]
                    progress.set_progress((50.0 if adjust else 95.0) * (n + 1) / len(strips))
            result = None
            if adjust and out_adjusted:
                result = _adjust(tmp_smoothed, tmp_kv, covariates, names, xtx, xty, yty, total, out_adjusted, profile,
                                 strips, executor, progress, fixed)
            progress.set_progress(100.0)
            return result
    finally:
        executor.close()
        if os.path.exists(tmp_kv):
            os.remove(tmp_kv)


def _counts_strip(job, progress=None) -> dict:
    """Pass 1 of a strip: smoothed (float32, no data −9999), K∗valid, and the fit's sums."""
    import rasterio
    from rasterio.windows import Window

    cloudy_path, valid_path, covariates, size, shape, width, (r0, r1, h0, h1), adjust = job
    window = Window(0, h0, width, h1 - h0)
    with rasterio.open(cloudy_path) as dc, rasterio.open(valid_path) as dv:
        # beyond the raster's top and bottom edges is zero (no data), not mirrored
        cloudy = dc.read(1, window=window).astype(np.float64)
        valid = dv.read(1, window=window).astype(np.float64)
    smoothed, kv = smooth_arrays(cloudy, valid, size, shape)
    core = slice(r0 - h0, r0 - h0 + (r1 - r0))
    s, kvc = smoothed[core], kv[core]
    out = dict(smoothed=np.where(np.isnan(s), NODATA, s).astype(np.float32), kv=kvc.astype(np.float32))
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
        # einsum without BLAS: a BLAS product's rounding depends on its threads, which differ
        # between this process and a Dask worker
        out.update(xtx=np.einsum("ij,ik->jk", design, design, optimize=False),
                   xty=np.einsum("ij,i->j", design, y, optimize=False),
                   yty=float(np.einsum("i,i->", y, y, optimize=False)), total=int(ok.sum()))
    return out


def _counts_adjusted(job, progress=None):
    """Pass 2 of a strip: the smoothed probability less the covariates' explained part."""
    import rasterio
    from rasterio.windows import Window

    smoothed_path, kv_path, covariates, width, (r0, r1), beta, means = job
    window = Window(0, r0, width, r1 - r0)
    with rasterio.open(smoothed_path) as ds, rasterio.open(kv_path) as dkv:
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
    return np.where(nodata, NODATA, adjusted).astype(np.float32), float(adjusted[~nodata].sum())


def _adjust(smoothed_path, kv_path, covariates, names, xtx, xty, yty, total, out_adjusted, profile, strips,
            executor, progress, fixed: dict | None = None) -> Regression:
    import rasterio
    from rasterio.windows import Window

    if total <= len(names) + 1 and fixed is None:
        raise ValueError("Too few pixels with data to fit the adjustment.")
    if fixed is None:
        beta, *_ = np.linalg.lstsq(xtx, xty, rcond=None)
        means = xtx[0, 1:] / total
    else:  # a previous run's fit: its coefficients and the covariate means it removed the effect around
        beta = np.array([float(fixed["intercept"])] + [float(c) for c in fixed["coefficients"]])
        means = np.array([float(v) for v in fixed["means"]])
    total = max(total, 1)
    mean_y = xty[0] / total
    ss_tot = yty - total * mean_y**2
    ss_res = yty - 2 * beta @ xty + beta @ xtx @ beta
    r2 = float(1 - ss_res / ss_tot) if ss_tot > 0 else 0.0
    width = profile["width"]
    total_after = 0.0
    jobs = [(smoothed_path, kv_path, covariates, width, bounds[:2], beta, means) for bounds in strips]
    with atomic(out_adjusted) as tmp, rasterio.open(tmp, "w", **profile) as out:
        describe_band(out, "adjusted cloud probability, smoothed counts", "percent")
        for n, (adjusted, part) in executor.map(_counts_adjusted, jobs, progress):
            r0, r1 = strips[n][:2]
            total_after += part
            out.write(adjusted[None], window=Window(0, r0, width, r1 - r0))
            progress.set_progress(50.0 + 45.0 * (n + 1) / len(strips))
    result = Regression(names, [float(b) for b in beta[1:]], float(beta[0]), r2, int(total), [float(m) for m in means],
                        float(mean_y), total_after / total, fit_from=fixed.get("fit_from") if fixed else None)
    with open(os.path.splitext(out_adjusted)[0] + ".regression.json", "w") as fh:
        json.dump(asdict(result), fh, indent=1)
    return result


# --------------------------------------------------------------------------------------------
# The reference product's adjustment: each pixel's deviation from its acquisition-weighted
# neighbourhood, and an OLS of the probability on that deviation.


@dataclass
class ReferenceAdjustment:
    """The fitted reference adjustment: p = intercept + slope·d' (percent per percent of
    deviation), the median deviation ``m`` (percent), R², pixels fitted and pixels shifted."""

    intercept: float
    slope: float
    median_deviation_pct: float
    r2: float
    pixels: int
    shifted: int
    threshold_pct: float
    kernel_size: int
    mean_before: float
    mean_after: float
    fit_from: str | None = None  # the .regression.json whose a, b and m were applied instead of fitting
    rows_left_out: int = 0  # published variant: rows (pixel × band) whose deviation is undefined, no data
    pixels_without_observation: int = 0  # published variant: pixels with n = 0 (its code's fit fails on them)


def neighbourhood_deviation(cloudy: np.ndarray, valid: np.ndarray, size: int = 21):
    """(p, lag, d) of one window, float64, NaN where undefined.

    p = 100·cloudy/valid (percent; NaN where valid is 0); lag = K0∗(p·n) / K0∗n with K0 a
    ``size``² kernel of ones whose centre is 0 and zeros beyond the window's edges (NaN where
    K0∗n = 0); d = 100·(p − lag)/lag (percent; NaN where p or lag is undefined or lag is 0).
    """
    from scipy.ndimage import uniform_filter

    n = valid.astype(np.float64)
    pn = 100.0 * cloudy.astype(np.float64)  # p·n: cloudy is Σ p/100
    pn[n <= 0] = 0.0
    cells = float(size * size)
    # box sum minus the centre: the kernel of ones with a 0 in the middle
    sum_pn = uniform_filter(pn, size=size, mode="constant", cval=0.0)
    sum_pn *= cells
    sum_pn -= pn
    sum_n = uniform_filter(n, size=size, mode="constant", cval=0.0)
    sum_n *= cells
    sum_n -= n
    # running sums leave residues of ~1e-12 where the exact sums are 0: the counts are whole
    # numbers, and a p·n (a sum of percents) under 1e-6 is such a residue, not a cloud
    np.rint(sum_n, out=sum_n)
    sum_pn[sum_pn < 1e-6] = 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        has_data = n > 0
        p = np.where(has_data, pn / np.where(has_data, n, 1.0), np.nan)
        lag = np.where(sum_n > 0, sum_pn / np.where(sum_n > 0, sum_n, 1.0), np.nan)
        d = 100.0 * (p - lag) / lag
    d[~np.isfinite(d)] = np.nan
    return p, lag, d


def _strip_rows_for(width: int, reach: int, memory_mb: float, arrays: int = 10) -> int:
    """Rows per strip so that ``arrays`` float64 arrays of the strip (halo included) fit in
    ``memory_mb``; at least 4 halos tall so the halo is a small share of the work."""
    rows = int(memory_mb * 1e6 / (8.0 * arrays * max(1, width))) - 2 * reach
    return max(4 * reach, 64, rows)


def _strips(height: int, rows: int, reach: int):
    for r0 in range(0, height, rows):
        r1 = min(height, r0 + rows)
        yield r0, r1, max(0, r0 - reach), min(height, r1 + reach)


class _Histogram:
    """Counts of values in [lo, hi) in ``bins`` bins with explicit edges, and of values below lo.

    A value's bin is decided by comparisons with the edges (the arithmetic guess corrected),
    so a later pass that keeps the values of one bin by comparison finds exactly its count.
    """

    def __init__(self, lo: float, hi: float, bins: int = 1 << 16):
        self.lo, self.hi, self.bins = float(lo), float(hi), bins
        self.edges = np.linspace(self.lo, self.hi, bins + 1)
        self.edges[-1] = self.hi
        self.counts = np.zeros(bins, np.int64)
        self.below = 0

    def index(self, v: np.ndarray) -> np.ndarray:
        width = (self.hi - self.lo) / self.bins
        idx = np.clip(((v - self.lo) / width).astype(np.int64), 0, self.bins - 1)
        idx -= v < self.edges[idx]
        idx += v >= self.edges[idx + 1]
        return np.clip(idx, 0, self.bins - 1)

    def add(self, v: np.ndarray) -> None:
        self.below += int(np.count_nonzero(v < self.lo))
        v = v[(v >= self.lo) & (v < self.hi)]
        self.counts += np.bincount(self.index(v), minlength=self.bins)

    def locate(self, rank: int) -> tuple[float, float, int, int]:
        """(bin low edge, bin high edge, values below the bin, values in it) of the rank-th value."""
        cum = np.cumsum(self.counts)
        i = int(np.searchsorted(cum, rank - self.below, side="right"))
        i = min(i, self.bins - 1)
        before = self.below + (int(cum[i - 1]) if i else 0)
        return float(self.edges[i]), float(self.edges[i + 1]), before, int(self.counts[i])


def _exact_order_statistic(rank: int, hist: _Histogram, histogram_of, collect, collect_limit: int = 4_000_000) -> float:
    """The ``rank``-th smallest (0-based) of a set of values spread over strips, starting from
    ``hist`` over them, whose [lo, hi) must hold the rank: bins narrowed pass by pass
    (``histogram_of(lo, hi, bins)`` → a :class:`_Histogram` of every strip) until the one holding
    the rank is small enough to sort (``collect(lo, hi)`` → values below lo, and the distinct
    values in [lo, hi) with their counts)."""
    while True:
        lo, hi, _, inside = hist.locate(rank)
        if not lo < hi:  # bins finer than the floats there: the interval holds only a few values
            lo, hi = hist.lo, hist.hi
        elif inside > collect_limit and np.nextafter(lo, np.inf) < hi:
            hist = histogram_of(lo, hi, hist.bins)
            continue
        below, u, c = collect(lo, hi)
        return float(u[int(np.searchsorted(np.cumsum(c), rank - below, side="right"))])


@dataclass(frozen=True)
class _Strip:
    """Rows [r0, r1) of the counts, read with their halo [h0, h1); ``published`` for the 2024
    release's pooled rows (:func:`published_rows`) instead of the documented deviation."""

    cloudy_path: str
    valid_path: str
    size: int
    width: int
    r0: int
    r1: int
    h0: int
    h1: int
    published: bool = False

    def deviation(self):
        """(y, lag, d, x) of the strip's own rows: the regressand, the lag, the deviation and the
        pixel values it is taken from. Documented: y = x = p (:func:`neighbourhood_deviation`);
        published: y = the lag and x = (p, n), one layer per band (:func:`published_rows`)."""
        import rasterio
        from rasterio.windows import Window

        window = Window(0, self.h0, self.width, self.h1 - self.h0)
        with rasterio.open(self.cloudy_path) as dc, rasterio.open(self.valid_path) as dv:
            cloudy, valid = dc.read(1, window=window), dv.read(1, window=window)
        core = slice(self.r0 - self.h0, self.r1 - self.h0)
        if self.published:
            y, lag, d, x = published_rows(cloudy, valid, self.size)
            return y[:, core], lag[core], d[:, core], x[:, core]
        p, lag, d = neighbourhood_deviation(cloudy, valid, self.size)
        return p[core], lag[core], d[core], p[core]


def published_rows(cloudy: np.ndarray, valid: np.ndarray, size: int = 21):
    """The 2024 release's table of one window (its notebook, cells 16–20), as arrays: one layer
    per band of its two-band raster, band 1 = p (float32, NaN where n = 0), band 2 = n.

    Its ``.join(lag, lsuffix='_wy')`` puts the suffix on the *pixel* column, so what it calls the
    probability is the lag: for each row with pixel value x, d = 100·(lag − x)/x, computed as
    pandas computes it on float32 columns; the regressand y is the lag on both bands' rows.
    Returns (y (2, h, w) float64, lag (h, w) float64, d (2, h, w) float64, x (2, h, w) float32);
    d is NaN where the code's would be infinite or undefined (x = 0 or missing, no lag)."""
    p, lag, _ = neighbourhood_deviation(cloudy, valid, size)
    x = np.stack([p, valid.astype(np.float64)]).astype(np.float32)
    lag32 = lag.astype(np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        d32 = lag32[None] - x
        d32 *= np.float32(100.0)
        d32 /= x
    d = d32.astype(np.float64)
    d[~np.isfinite(d)] = np.nan
    y = np.broadcast_to(lag32.astype(np.float64), x.shape)
    return y, lag, d, x


FIRST_BINS = (-100.0, 1000.0, 1 << 16)  # d ≥ −100 (p ≥ 0, lag > 0); bins of 0.017 points to 1000 %


def _strip_sums(job, progress=None) -> dict:
    """Pass 1 of a strip: its lag (float32), the sums of the fit, and d's first histogram."""
    strip, threshold = job
    p, lag, d, x = strip.deviation()  # p: the regressand (the lag's rows for the published variant)
    before = x[0] if strip.published else x  # the probability before the adjustment
    has_p = ~np.isnan(before)
    out = dict(lag=np.where(np.isnan(lag), NODATA, lag).astype(np.float32), p_sum=float(before[has_p].sum()),
               p_count=int(has_p.sum()), n_fit=0, n_in=0, p=0.0, pp=0.0, p_in=0.0, d_out=0.0, dd_out=0.0,
               pd_out=0.0, d_max=-np.inf, no_observation=int(np.count_nonzero(x[1] == 0)) if strip.published else 0)
    hist = _Histogram(*FIRST_BINS)
    ok = ~np.isnan(d)  # d defined implies p defined
    if ok.any():
        pv, dv = p[ok], d[ok]
        inside = np.abs(dv) <= threshold
        do, po = dv[~inside], pv[~inside]
        dot = lambda a, b: float(np.einsum("i,i->", a, b, optimize=False))  # noqa: E731 (no BLAS: see _counts_strip)
        out.update(n_fit=int(ok.sum()), n_in=int(inside.sum()), p=float(pv.sum()), pp=dot(pv, pv),
                   p_in=float(pv[inside].sum()), d_out=float(do.sum()), dd_out=dot(do, do), pd_out=dot(po, do),
                   d_max=float(dv.max()))
        hist.add(dv)
    out["hist"], out["below"] = hist.counts, hist.below
    return out


def _strip_histogram(job, progress=None):
    """(values below lo, counts in bins of [lo, hi)) of a strip's d."""
    strip, lo, hi, bins = job
    d = strip.deviation()[2]
    hist = _Histogram(lo, hi, bins)
    hist.add(d[~np.isnan(d)])
    return hist.below, hist.counts


def _strip_collect(job, progress=None):
    """(values below lo, distinct values of [lo, hi), their counts) of a strip's d."""
    strip, lo, hi = job
    d = strip.deviation()[2]
    d = d[~np.isnan(d)]
    u, c = np.unique(d[(d >= lo) & (d < hi)], return_counts=True)
    return int(np.count_nonzero(d < lo)), u, c


def _strip_adjusted(job, progress=None):
    """Pass 3 of a strip: adjusted = p − b·(d' − m) (float32, no data −9999) and its sum.

    Published variant: lag − b·(d' − m) for both bands' rows (a layer each), no data where d is
    undefined (where the published code's fit fails); the sum is band 1's."""
    strip, b, m, threshold = job
    p, _, d, _ = strip.deviation()
    shift = np.where(np.abs(d) > threshold, b * (d - m), 0.0)  # NaN d compares False: unchanged
    adjusted = p - shift
    if strip.published:
        adjusted[np.isnan(d)] = np.nan
        band1 = adjusted[0]
    else:
        band1 = adjusted
    return (np.where(np.isnan(adjusted), NODATA, adjusted).astype(np.float32), float(np.nansum(band1)),
            int(np.count_nonzero(~np.isnan(band1))))


def reference_adjustment(
    cloudy_path: str,
    valid_path: str,
    out_smoothed: str,
    out_adjusted: str | None = None,
    size: int = 21,
    threshold_pct: float = 5.0,
    memory_mb: float = 400.0,
    progress: Progress | None = None,
    scheduler=None,
    fit_from=None,
) -> ReferenceAdjustment:
    """The reference product's adjustment of the counts of cloudprob:cloudfrequency.

        p   = 100·cloudy/valid, n = valid
        lag = K0∗(p·n) / K0∗n            K0: size² ones, centre 0, zeros beyond the edges
        d   = 100·(p − lag)/lag           percent deviation from the neighbourhood
        m   = median of d (exact; the mean of the two middle values for an even count)
        d'  = d where |d| > threshold_pct, else m
        OLS p = a + b·d' over the pixels where p and d are defined
        adjusted = p − b·(d' − m)         the prediction at m plus the residual; no clipping;
                                          adjusted = p where d is undefined

    Writes ``out_smoothed`` = lag and ``out_adjusted`` (float32 percent, no data −9999) and a
    JSON report beside the adjusted raster (``.regression.json``). Worked in strips of the
    full width sized by ``memory_mb``: a pass for lag and the sums of the fit, usually one for
    the exact median (a fine histogram from the first pass, then the middle bin's values), one
    for the adjusted raster; nothing the size of the raster in memory. The OLS needs no pass of
    its own: over the pixels within the threshold d' is the constant m, so Σd', Σd'², Σp·d'
    follow from the sums over the others and the counts. ``scheduler`` runs the strips as Dask
    tasks (they read the counts by path: a file system the workers share); the partial sums are
    added in strip order either way, so the outputs are bit for bit the same.

    The fit (a, b and the median m) is made over every pixel of these rasters, i.e. over the
    extent of the run that made the counts. ``fit_from``, a previous run's ``.regression.json`` of
    this method (same kernel size and threshold), applies its a, b and m instead of fitting (no
    median passes): runs over different extents then give the same adjusted value wherever a
    pixel's neighbourhood lies inside both. R² is then that fit's on these pixels.
    """
    return _deviation_adjustment(cloudy_path, valid_path, out_smoothed, out_adjusted, None, size, threshold_pct,
                                 memory_mb, progress, scheduler, fit_from, published=False)


def published_adjustment(
    cloudy_path: str,
    valid_path: str,
    out_smoothed: str,
    out_adjusted: str | None = None,
    out_adjusted_count: str | None = None,
    size: int = 21,
    threshold_pct: float = 5.0,
    memory_mb: float = 400.0,
    progress: Progress | None = None,
    scheduler=None,
    fit_from=None,
) -> ReferenceAdjustment:
    """The adjustment as the 2024 release's published code computes it (docs/variants.md), exactly,
    in strips: its two-band raster (band 1 p = 100·cloudy/valid, band 2 n = valid) as one table
    of rows, one per band and pixel, x the row's value:

        lag = K0∗(p·n) / K0∗n              as the documented method's
        d   = 100·(lag − x)/x              the join's suffix lands on the pixel column
        m   = median of d over the rows of both bands (exact)
        d'  = d where |d| > threshold_pct, else m
        OLS lag = a + b·d' over the rows of both bands (scikit-learn's LinearRegression)
        result = lag − b·(d' − m)          for every row, no clipping

    ``out_adjusted`` holds band 1's rows (what the published table's ``probability_*`` columns
    describe), ``out_adjusted_count`` band 2's (its ``acquisition_count_*`` columns: a surface
    near the lag, not a count). A row whose d the published code cannot make (a pixel without
    observations, a 0 % pixel, no neighbour with data) stops that code; here it is no data in
    the result, left out of the median and the fit, and counted in the report
    (``rows_left_out``, ``pixels_without_observation``). ``fit_from`` reuses a previous run's
    fit of this variant. Written as :func:`reference_adjustment` writes: ``out_smoothed`` = lag.
    """
    return _deviation_adjustment(cloudy_path, valid_path, out_smoothed, out_adjusted, out_adjusted_count, size,
                                 threshold_pct, memory_mb, progress, scheduler, fit_from, published=True)


def _deviation_adjustment(cloudy_path, valid_path, out_smoothed, out_adjusted, out_adjusted_count, size,
                          threshold_pct, memory_mb, progress, scheduler, fit_from, published) -> ReferenceAdjustment:
    """The strips, the exact median and the fit of :func:`reference_adjustment` and
    :func:`published_adjustment` (``published``: the pooled rows of :func:`published_rows`)."""
    import rasterio
    from rasterio.windows import Window

    from .executor import executor_for

    progress = progress or NullProgress()
    remove_stale_parts(out_smoothed, out_adjusted, *([out_adjusted_count] if out_adjusted_count else []))
    if size < 3 or size % 2 == 0:
        raise ValueError("The kernel size must be an odd number of pixels, at least 3 (e.g. 21).")
    if not threshold_pct >= 0:
        raise ValueError("The deviation threshold must be 0 or more (percent).")
    method = "published" if published else "reference"
    fixed = None if fit_from is None else load_fit(fit_from, method)
    if fixed is not None and (int(fixed["kernel_size"]), float(fixed["threshold_pct"])) != (size, float(threshold_pct)):
        raise FitError(f"The fit to reuse was made with a {int(fixed['kernel_size'])}-pixel kernel and a "
                       f"{float(fixed['threshold_pct']):g} % threshold; this run asks for {size} pixels and "
                       f"{threshold_pct:g} %: use the same, or no fit to reuse.")
    profile = _output_profile(cloudy_path, valid_path)
    height, width = profile["height"], profile["width"]
    reach = size // 2
    rows = _strip_rows_for(width, reach, memory_mb)
    strips = [_Strip(str(cloudy_path), str(valid_path), size, width, *bounds, published=published)
              for bounds in _strips(height, rows, reach)]
    executor = executor_for(scheduler, local_threads=LOCAL_THREADS)
    steps = [0, 3 * len(strips)]

    def each(fn, jobs):
        for _, result in executor.map(fn, jobs, progress):
            steps[0] += 1
            progress.set_progress(min(99.0, 100.0 * steps[0] / steps[1]))
            yield result

    try:
        with contextlib.ExitStack() as files:  # the outputs, renamed into place together once all are written
            tmp_smoothed = files.enter_context(atomic(out_smoothed))
            # pass 1: lag written; the sums of the fit and d's first histogram, added in strip order
            keys = ("p_sum", "p_count", "n_fit", "n_in", "p", "pp", "p_in", "d_out", "dd_out", "pd_out", "no_observation")
            s = dict.fromkeys(keys, 0)
            first = _Histogram(*FIRST_BINS)
            d_max = -np.inf
            with rasterio.open(tmp_smoothed, "w", **profile) as out:
                describe_band(out, "neighbourhood cloud probability (lag), acquisition-weighted", "percent")
                for strip, part in zip(strips, each(_strip_sums, [(strip, threshold_pct) for strip in strips])):
                    out.write(part["lag"][None], window=Window(0, strip.r0, width, strip.r1 - strip.r0))
                    for k in keys:
                        s[k] += part[k]
                    first.counts += part["hist"]
                    first.below += part["below"]
                    d_max = max(d_max, part["d_max"])
            n_fit, n_in = s["n_fit"], s["n_in"]
            if n_fit < 3:
                raise ValueError("Too few pixels with a neighbourhood to fit the adjustment (the counts have no data?).")

            # pass 2: the exact median of d
            def histogram_of(lo, hi, bins):
                hist = _Histogram(lo, hi, bins)
                for _, (below, counts) in executor.map(_strip_histogram, [(st, lo, hi, bins) for st in strips], progress):
                    hist.below += below
                    hist.counts += counts
                return hist

            def collect(lo, hi):
                below, uniques, counts = 0, [], []
                for _, (b, u, c) in executor.map(_strip_collect, [(st, lo, hi) for st in strips], progress):
                    below += b
                    uniques.append(u)
                    counts.append(c)
                u, inverse = np.unique(np.concatenate(uniques), return_inverse=True)
                return below, u, np.bincount(inverse, weights=np.concatenate(counts).astype(np.float64)).astype(np.int64)

            middle = []
            for rank in ([] if fixed else sorted({(n_fit - 1) // 2, n_fit // 2})):
                hist = first
                if rank >= first.below + int(first.counts.sum()):  # the middle lies beyond 1000 %
                    hist = histogram_of(FIRST_BINS[1], float(np.nextafter(d_max, np.inf)), FIRST_BINS[2])
                middle.append(_exact_order_statistic(rank, hist, histogram_of, collect))
            m = float(fixed["median_deviation_pct"]) if fixed else float(sum(middle) / len(middle))
            steps[0] = 2 * len(strips)

            # the fit, from pass 1's sums: over the pixels within the threshold d' = m
            sum_d = s["d_out"] + m * n_in
            sum_dd = s["dd_out"] + m * m * n_in
            sum_pd = s["pd_out"] + m * s["p_in"]
            xtx = np.array([[n_fit, sum_d], [sum_d, sum_dd]], dtype=np.float64)
            xty = np.array([s["p"], sum_pd])
            if abs(np.linalg.det(xtx)) <= 1e-12 * max(1.0, sum_dd * n_fit):
                a, b = s["p"] / n_fit, 0.0  # every deviation within the threshold: nothing to regress on
            else:
                a, b = (float(v) for v in np.linalg.solve(xtx, xty))
            if fixed:  # the previous run's fit, not this extent's
                a, b = float(fixed["intercept"]), float(fixed["slope"])
            mean_p = s["p"] / n_fit
            ss_tot = s["pp"] - n_fit * mean_p * mean_p
            ss_res = s["pp"] - 2 * (a * s["p"] + b * sum_pd) + (a * a * n_fit + 2 * a * b * sum_d + b * b * sum_dd)
            r2 = float(1.0 - ss_res / ss_tot) if ss_tot > 0 else 0.0

            # pass 3: adjusted = p − b·(d' − m) (published: lag − b·(d' − m), both bands)
            shifted = n_fit - n_in if b != 0.0 else 0
            after_sum, after_count = 0.0, 0
            targets = [t for t in (out_adjusted, out_adjusted_count if published else None) if t]
            tmp_adjusted = {t: files.enter_context(atomic(t)) for t in targets}
            if targets:
                with contextlib.ExitStack() as stack:
                    outs = [stack.enter_context(rasterio.open(tmp_adjusted[t], "w", **profile)) if t else None
                            for t in (out_adjusted, out_adjusted_count if published else None)]
                    for band, out in enumerate(outs, start=1):
                        if published and out is not None:  # read by zonal statistics: band 2 is no count
                            out.update_tags(**{PUBLISHED_TAG: str(band)})
                        if out is not None:
                            describe_band(out, *{1: ("adjusted cloud probability, as published" if published else
                                                     "adjusted cloud probability", "percent"),
                                                 2: ("adjusted band 2 of the 2024 release, not a count", "percent")}[band])
                    jobs = [(strip, b, m, threshold_pct) for strip in strips]
                    for strip, (adjusted, total, count) in zip(strips, each(_strip_adjusted, jobs)):
                        after_sum += total
                        after_count += count
                        layers = adjusted if published else adjusted[None]
                        for out, layer in zip(outs, layers):
                            if out is not None:
                                out.write(layer[None], window=Window(0, strip.r0, width, strip.r1 - strip.r0))
            p_count = s["p_count"]
            result = ReferenceAdjustment(
                intercept=a, slope=b, median_deviation_pct=m, r2=r2, pixels=int(n_fit), shifted=int(shifted),
                threshold_pct=float(threshold_pct), kernel_size=int(size),
                mean_before=s["p_sum"] / p_count if p_count else float("nan"),
                mean_after=(after_sum / after_count if (after_count and out_adjusted) else float("nan")),
                fit_from=None if fixed is None or isinstance(fit_from, dict) else str(fit_from),
            )
            if published:
                result.rows_left_out = int(2 * height * width - n_fit)
                result.pixels_without_observation = int(s["no_observation"])
        if out_adjusted:
            report = dict(asdict(result), method=_REPORT_METHOD[method], formula=_REPORT_FORMULA[method])
            if not published:
                del report["rows_left_out"], report["pixels_without_observation"]
            with open(os.path.splitext(out_adjusted)[0] + ".regression.json", "w") as fh:
                json.dump(report, fh, indent=1)
        progress.set_progress(100.0)
        return result
    finally:
        executor.close()
