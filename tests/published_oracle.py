"""The 2024 release's pipeline, the oracle of tests/test_published_variant.py: run in its own
virtual environment (.build/published-venv, tests/published_requirements.txt: the libraries the
published code ran on in November 2025) with the libraries it uses, the same calls in the same
order — nothing of the plugin is imported here.

The reference dataset's code (Imago-SDRUK/DataProduct-SPF: ``demo/spf.py`` on branch ``rse`` for
the composite, ``demo/spf_post_processing.ipynb`` on branch ``shaonlee_lsoa_level``, cells 16–33,
for the adjustment and the table) is transcribed step by step; only its inputs are adapted (the
items of a loopback STAC server instead of Earth Search, the plugin's grid as the geobox, local
paths). Where the committed code cannot run as it stands, the smallest change is made and named:
cell 32's ``rename`` has a stray comma where a line was taken out (a SyntaxError), and cell 33 then
drops ``probability_count`` and ``acquisition_count_count``, names only that line can have made:
the rename is written with it (``band_1_count``/``band_2_count`` to those names), without the comma.

    python published_oracle.py composite ITEMS.json EPSG "a,b,c,d,e,f" ROWS COLS OUT.tif
    python published_oracle.py adjust TWO_BAND.tif ZONES.gpkg LAYER ID_FIELD OUT.npz OUT.csv

``composite`` writes the two-band float32 raster the notebook reads (band 1 the mean ``cloud``
over the observations whose SCL is not 0, band 2 their count); ``adjust`` writes the adjusted
rows of both bands (with their coordinates) and the per-area table.
"""
from __future__ import annotations

import json
import sys


def composite(items_path, epsg, transform, rows, cols, out_path):
    import odc.stac
    import pystac
    import rioxarray  # noqa: F401  (the .rio accessor, as spf.py imports it)
    import xarray as xr
    from affine import Affine
    from odc.geo.geobox import GeoBox

    items = [pystac.Item.from_dict(f) for f in json.load(open(items_path))["features"]]
    geobox = GeoBox((int(rows), int(cols)), Affine(*[float(v) for v in transform.split(",")]), f"EPSG:{epsg}")
    # load_tile: odc.stac.load with its default grouping (items of the same datetime fused),
    # nearest resampling, the config's chunks
    data = odc.stac.load(items, bands=["cloud", "scl"], geobox=geobox, resampling="nearest",
                         chunks={"time": 20, "x": 250, "y": 250})
    # apply_scl_mask(origin_band="cloud", scl_band="scl", dtype_origin="float32", dtype_mask="int16",
    #                mask_values=0, fill_value=-1)
    cloud = data["cloud"].astype("float32").copy()
    scl = data["scl"].astype("int16")
    cloud_masked = cloud.where(scl != 0, -1).fillna(-1)
    # process_cloud: one layer per calendar year
    kept = cloud_masked.where(cloud_masked != -1)
    out = xr.Dataset({
        "cloud_prob": kept.groupby("time.year").mean(dim="time", skipna=True).astype("float32"),
        "valid_count": kept.groupby("time.year").count(dim="time").astype("int16"),
    })
    if out.sizes["year"] != 1:
        raise SystemExit(f"{out.sizes['year']} calendar years: the published code writes one layer per year")
    # to_geotif with out_dtype float32: the two variables as the bands of one GeoTIFF
    bands = xr.concat([out["cloud_prob"].isel(year=0).astype("float32"),
                       out["valid_count"].isel(year=0).astype("float32")], dim="band")
    bands = bands.assign_coords(band=[1, 2]).transpose("band", "y", "x")
    bands.rio.write_crs(f"EPSG:{epsg}", inplace=True)
    bands.compute().rio.to_raster(out_path, dtype="float32")
    print(json.dumps({"observations": int(data.sizes["time"]), "items": len(items)}))


def weighted_spatial_lag(prob_array, acq_array, kernel_size):
    """Cell 16: the acquisition-weighted mean of the neighbours (centre excluded), zeros beyond the edges."""
    import numpy as np
    from scipy.ndimage import convolve

    prob = prob_array.values if hasattr(prob_array, "values") else prob_array
    acq = acq_array.values if hasattr(acq_array, "values") else acq_array
    kernel = np.ones((kernel_size, kernel_size))
    kernel[kernel_size // 2, kernel_size // 2] = 0
    prob_filled = np.nan_to_num(prob, nan=0.0)
    acq_filled = np.nan_to_num(acq, nan=0.0)
    weighted_prob_sum = convolve(prob_filled * acq_filled, kernel, mode="constant")
    acq_sum = convolve(acq_filled, kernel, mode="constant")
    lag = np.divide(weighted_prob_sum, acq_sum, where=acq_sum > 0, out=np.full_like(weighted_prob_sum, np.nan))
    return prob_array.copy(data=lag)


def adjust(tif_path, zones_path, layer, id_field, out_npz, out_csv):
    import geopandas as gpd
    import numpy as np
    import pandas
    import rioxarray
    import xarray
    from exactextract import exact_extract
    from sklearn.linear_model import LinearRegression

    full_tiff = rioxarray.open_rasterio(tif_path, chunks=True).compute()  # cell 7
    wy_convolved = weighted_spatial_lag(full_tiff.sel(band=1), full_tiff.sel(band=2), kernel_size=21)  # cell 18
    # cell 20: one row per band and pixel; the join's suffix goes on the left (pixel) column
    db = full_tiff.to_dataframe("prob")[["prob"]].join(wy_convolved.to_dataframe("prob")[["prob"]], lsuffix="_wy")
    db["pct_diff"] = 100 * (db["prob"] - db["prob_wy"]) / db["prob_wy"]
    db["pct_diff_masked"] = db["pct_diff"].median()
    outside = (db["pct_diff"] > 5) | (db["pct_diff"] < -5)
    db.loc[outside, "pct_diff_masked"] = db.loc[outside, "pct_diff"]
    lm = LinearRegression().fit(db[["pct_diff_masked"]], db["prob"])  # cell 23
    err = db["prob"] - lm.predict(db[["pct_diff_masked"]])
    yb = lm.predict(pandas.DataFrame(db["pct_diff"].median(), index=db.index, columns=["pct_diff_masked"]))  # cell 24
    clean_c = xarray.DataArray.from_series(yb + err)  # cell 25
    clean_c = clean_c.rio.write_crs(full_tiff.rio.crs)
    np.savez(out_npz, values=clean_c.transpose("band", "y", "x").values.astype(np.float64),
             x=clean_c["x"].values, y=clean_c["y"].values, lag=wy_convolved.values.astype(np.float64),
             lag_x=wy_convolved["x"].values, lag_y=wy_convolved["y"].values,
             median=float(db["pct_diff"].median()), intercept=float(lm.intercept_), slope=float(lm.coef_[0]))

    lsoas = gpd.read_file(zones_path, layer=layer)  # cells 26–27
    minx, miny, maxx, maxy = clean_c.rio.bounds()
    lsoas_clipped = lsoas.cx[minx:maxx, miny:maxy]
    stats = exact_extract(clean_c, lsoas_clipped, ["mean", "median", "min", "max", "stdev", "count"],
                          include_cols=[id_field], output="pandas")  # cell 31
    with_stats = lsoas_clipped.merge(stats, on=id_field, how="left")
    with_stats = with_stats.rename(columns={  # cell 32, the line cell 33 needs in place of its stray comma
        "band_1_mean": "probability_mean", "band_1_median": "probability_median", "band_1_min": "probability_min",
        "band_1_max": "probability_max", "band_1_stdev": "probability_stdev",
        "band_2_mean": "acquisition_count_mean", "band_2_median": "acquisition_count_median",
        "band_2_min": "acquisition_count_min", "band_2_max": "acquisition_count_max",
        "band_2_stdev": "acquisition_count_stdev",
        "band_1_count": "probability_count", "band_2_count": "acquisition_count_count",
    })
    with_stats = with_stats.drop(columns=["acquisition_count_count", "probability_count"])  # cell 33
    with_stats.drop(columns="geometry").to_csv(out_csv, index=False)  # cell 34, without the geometry


if __name__ == "__main__":
    {"composite": composite, "adjust": adjust}[sys.argv[1]](*sys.argv[2:])
