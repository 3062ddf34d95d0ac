"""The per-area 95 % interval is calibrated: over independent years drawn from the sample
archive's truth, it covers the true value in 90–99 % of (area, year) pairs, for both measures.

Each year is the generator's own sums of that year's observations (``observation_counts`` for
the cloud frequency, ``observation_sums`` for the mean of the ``cloud`` probability; both render
the scenes in memory and owe nothing to the plugin's reader) on the truth's EPSG:27700 grid. The
artefacts are switched off (no orbit-edge over-detection, no urban false cloud), so the expected
per-pixel value is the truth's and what remains between a year and the truth is sampling: the
clouds of that year's acquisitions, which every cell of an area shares. The truth per area is the
generator's (``truth/small_areas_truth.csv``: ``true_cloud_prob_pct`` and
``true_mean_cloud_prob_pct``).
"""
from __future__ import annotations

import csv

import numpy as np
import pytest
import rasterio

from cloud_probability.core.frequency import observation_stdev
from cloud_probability.core.zonal import zonal_statistics
from cloud_probability.sampledata import sample_archive as sa

YEARS = 20


def _write(path, array, transform, nodata=None):
    with rasterio.open(path, "w", driver="GTiff", width=array.shape[1], height=array.shape[0], count=1,
                       dtype=array.dtype.name, crs="EPSG:27700", transform=transform, nodata=nodata) as ds:
        ds.write(array[None])
    return str(path)


@pytest.fixture(scope="module")
def years(sample_archive, tmp_path_factory):
    """Per measure, per year: the zonal table of the raw probability with its counts and spread."""
    import geopandas as gpd

    folder = tmp_path_factory.mktemp("calibration")
    zones = gpd.read_file(sample_archive / "zones" / "small_areas.gpkg", layer="small_areas")
    layout = sa.make_layout(sa.SampleSpec.small())
    transform, width, height = sa._truth_grid(layout)
    tables = {"frequency": [], "mean_probability": []}
    for k in range(YEARS):
        spec = sa.SampleSpec.small(seed=5000 + k, edge_bias=0.0, urban_false_cloud=0.0)
        valid, cloudy = sa.observation_counts(spec, 27700, transform, (height, width))
        n, total, squares = sa.observation_sums(spec, 27700, transform, (height, width))
        for measure, (count, sums, sq) in (("frequency", (valid, cloudy.astype(np.float64), None)),
                                            ("mean_probability", (n, total, squares))):
            with np.errstate(invalid="ignore", divide="ignore"):
                p = np.where(count > 0, 100.0 * sums / np.maximum(count, 1), -9999.0).astype(np.float32)
            sd = observation_stdev(count, sums, sq)
            paths = (_write(folder / f"p{k}{measure}.tif", p, transform, -9999.0),
                     _write(folder / f"n{k}{measure}.tif", count, transform, 0),
                     _write(folder / f"s{k}{measure}.tif", np.where(np.isnan(sd), -9999.0, sd).astype(np.float32),
                            transform, -9999.0))
            tables[measure].append(
                zonal_statistics(paths[0], zones, "code", valid_path=paths[1], spread_path=paths[2]).table)
    return tables


TRUTH_COLUMN = {"frequency": "true_cloud_prob_pct", "mean_probability": "true_mean_cloud_prob_pct"}


@pytest.mark.parametrize("measure", ["frequency", "mean_probability"])
def test_interval_covers_the_truth_in_90_to_99_percent_of_area_years(years, sample_archive, measure):
    with open(sample_archive / "truth" / "small_areas_truth.csv") as fh:
        truth = {r["code"]: float(r[TRUTH_COLUMN[measure]]) for r in csv.DictReader(fh)}
    covered, total, widths, errors = 0, 0, [], []
    for table in years[measure]:
        true = np.array([truth[c] for c in table["code"]])
        low, high = table["probability_ci95_low"].values, table["probability_ci95_high"].values
        covered += int(((low <= true) & (true <= high)).sum())
        total += len(true)
        widths.append(np.median(high - low))
        errors.append(table["probability_mean"].values - true)
    coverage = covered / total
    errors = np.concatenate(errors)
    print(f"\n{measure}: the 95 % interval covers the truth in {100 * coverage:.1f} % of {total} (area, year) pairs "
          f"over {YEARS} years; median width {np.median(widths):.1f} points; error sd {errors.std():.2f} points")
    assert total == YEARS * 300
    assert 0.90 <= coverage <= 0.99


def test_cells_taken_as_independent_would_not_be_calibrated(years, sample_archive):
    """The interval it replaces (binomial per cell × observation, cells independent) covers far less."""
    with open(sample_archive / "truth" / "small_areas_truth.csv") as fh:
        truth = {r["code"]: float(r["true_cloud_prob_pct"]) for r in csv.DictReader(fh)}
    covered = total = 0
    for table in years["frequency"]:
        true = np.array([truth[c] for c in table["code"]])
        p = table["probability_mean"].values
        n = table["acquisition_count_mean"].values * table["covered_cells"].values
        half = 1.96 * np.sqrt(p * (100 - p) / n)
        covered += int((np.abs(p - true) <= half).sum())
        total += len(true)
    assert covered / total < 0.5
