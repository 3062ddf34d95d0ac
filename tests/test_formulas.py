"""The transcriptions in tests/formulas.py against plain loops and hand computations (they are the
expected values of other tests, so they are checked first)."""
from __future__ import annotations

import numpy as np
import pytest
from formulas import box_sum, covariate_smoothing, weighted_mean
from rasterio.transform import from_origin
from shapely.geometry import Polygon, box


def test_box_sum_by_loops():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 9, (23, 30)).astype(float)
    expected = np.zeros_like(a)
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            expected[i, j] = a[max(0, i - 10):i + 11, max(0, j - 10):j + 11].sum()
    np.testing.assert_allclose(box_sum(a, 21), expected, rtol=1e-12)


def test_covariate_smoothing_by_hand():
    """A 1 × 3 raster with a 3-wide kernel: the window sums written out; one covariate fitted
    exactly (three pixels, intercept and two slopes)."""
    cloudy = np.array([[1.0, 2.0, 4.0]])
    valid = np.array([[2.0, 4.0, 4.0]])
    out = covariate_smoothing(cloudy, valid, covariates=[np.array([[0.0, 1.0, 1.0]])], size=3)
    smoothed = 100 * np.array([3 / 6, 7 / 10, 6 / 8])
    np.testing.assert_allclose(out["smoothed"][0], smoothed, rtol=1e-12)
    # three pixels, three unknowns (K∗valid = 6, 10, 8 and the covariate are independent): the fit
    # is exact, everything is explained, the mean is kept
    np.testing.assert_allclose(out["adjusted"][0], np.full(3, smoothed.mean()), rtol=1e-9)
    assert out["pixels"] == 3


def test_covariate_smoothing_leaves_out_no_data_and_clips():
    cloudy = np.array([[0.0, 0.0, 9.0, 9.0]])
    valid = np.array([[0.0, 0.0, 9.0, 9.0]])
    out = covariate_smoothing(cloudy, valid, covariates=[np.array([[1.0, 2.0, np.nan, 4.0]])], size=1)
    assert np.isnan(out["smoothed"][0, :2]).all() and out["smoothed"][0, 2:].tolist() == [100.0, 100.0]
    assert np.isnan(out["adjusted"][0, :3]).all() and out["adjusted"][0, 3] == 100.0 and out["pixels"] == 1


def test_weighted_mean_by_hand():
    transform = from_origin(0, 40, 20, 20)  # 2 × 2 cells of 20 m, origin at the top left
    values = np.array([[10.0, 20.0], [30.0, -9999.0]])
    # half of the top-left cell and all of the top-right one
    zone = box(10, 20, 40, 40)
    mean, weight = weighted_mean(values, zone, transform, nodata=-9999.0)
    assert weight == pytest.approx(1.5) and mean == pytest.approx((0.5 * 10 + 20) / 1.5)
    # a triangle over the bottom-left cell (half of it) and the no-data cell (which does not count)
    zone = Polygon([(0, 0), (40, 0), (0, 20)])
    mean, weight = weighted_mean(values, zone, transform, nodata=-9999.0)
    # the triangle covers 3/4 of the bottom-left cell (the line y = 20 − x/2 cuts it at 10 m)
    assert weight == pytest.approx(0.75) and mean == pytest.approx(30.0)
    assert np.isnan(weighted_mean(values, box(21, 1, 39, 19), transform, nodata=-9999.0)[0])


def test_covariate_smoothing_removes_the_explained_part_by_hand():
    """No smoothing (1-pixel kernel), the valid count as the only covariate: x = 1, 2, 3 and
    p = 10, 30, 20 % give b = 5 % per observation around mean x = 2, so p − 5·(x − 2)."""
    valid = np.array([[1.0, 2.0, 3.0]])
    cloudy = np.array([[0.1, 0.6, 0.6]])
    out = covariate_smoothing(cloudy, valid, size=1)
    np.testing.assert_allclose(out["smoothed"][0], [10.0, 30.0, 20.0], rtol=1e-12)
    np.testing.assert_allclose(out["beta"], [10.0, 5.0], rtol=1e-12)  # a = 20 − 5·2
    np.testing.assert_allclose(out["adjusted"][0], [15.0, 30.0, 15.0], rtol=1e-12)
