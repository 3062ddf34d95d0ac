"""The GeoTIFF writer: every raster the plugin writes is made here.

One profile (DEFLATE, the predictor of the data type, 256-pixel tiles when the raster is at least
that large, BigTIFF when needed), one no-data value per data type (:data:`NODATA`), one overview
rule (:func:`overview_factors`), and one way to write: to a temporary file beside the output,
renamed into place only when complete (:func:`atomic`), so a failed, cancelled or killed run never
leaves a half-written raster under the output's name; a killed run's temporary files are removed
by the next run that writes there.
"""
from __future__ import annotations

import contextlib
import os
import threading
from typing import Iterator

import numpy as np

from .cache import remove_stale_parts

# the no-data value of each data type, wherever a raster has one: masks (uint8) 255, counts and
# reflectances (uint16) 0, probabilities and every other float 32-bit −9999
NODATA = {"uint8": 255, "uint16": 0, "float32": -9999.0}

TILE = 256  # pixels: rasters at least this large in both directions are tiled
OVERVIEWS_FROM = 4096  # pixels: QGIS draws smaller rasters fast without pyramids; larger ones get them


def geotiff_profile(grid, dtype: str, count: int = 1, nodata: float | None = None, **extra) -> dict:
    """The profile of a GeoTIFF on ``grid`` (a :class:`core.reading.Grid`): DEFLATE with the
    horizontal predictor for integers and the floating-point one for floats; ``nodata`` None for a
    raster where every value is data (a count's zeros), else the data type's :data:`NODATA`."""
    if nodata is not None and NODATA.get(dtype) is not None and float(nodata) != float(NODATA[dtype]):
        raise ValueError(f"no data of {dtype} rasters is {NODATA[dtype]}, not {nodata}")
    rows, cols = grid.shape
    kind = np.dtype(dtype).kind
    profile = dict(driver="GTiff", width=cols, height=rows, count=count, dtype=dtype, crs=grid.crs,
                   transform=grid.transform, compress="DEFLATE", predictor=2 if kind in "iu" else 3,
                   BIGTIFF="IF_SAFER")
    if nodata is not None:
        profile["nodata"] = nodata
    if rows >= TILE and cols >= TILE:
        profile.update(tiled=True, blockxsize=TILE, blockysize=TILE)
    profile.update({k: v for k, v in extra.items() if v is not None})
    return profile


@contextlib.contextmanager
def atomic(path: str | os.PathLike) -> Iterator[str]:
    """The temporary path to write ``path`` through: renamed to ``path`` when the block ends
    normally, removed when it does not. Partial files of killed runs beside ``path`` go first."""
    path = os.fspath(path)
    remove_stale_parts(path)
    tmp = f"{path}.part-{os.getpid()}-{threading.get_ident()}.tif"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def overview_factors(rows: int, cols: int) -> list[int]:
    """The pyramid levels of a raster: none under :data:`OVERVIEWS_FROM` pixels, else halvings
    down to 256 pixels (at most 64×)."""
    if min(rows, cols) < OVERVIEWS_FROM:
        return []
    return [f for f in (2, 4, 8, 16, 32, 64) if min(rows, cols) // f >= TILE]


def add_overviews(ds, categorical: bool) -> None:
    """The pyramids of an open dataset by :func:`overview_factors`: nearest for classes and counts,
    average for continuous values."""
    from rasterio.enums import Resampling

    factors = overview_factors(ds.height, ds.width)
    if factors:
        ds.build_overviews(factors, Resampling.nearest if categorical else Resampling.average)


def write_raster(path: str, data: np.ndarray, grid, nodata: float | None, tags: dict | None = None) -> None:
    """Write ``data`` (rows × cols, or bands × rows × cols) on ``grid`` as one GeoTIFF, with its
    pyramids and ``tags``, atomically."""
    import rasterio

    bands = data[np.newaxis] if data.ndim == 2 else data
    profile = geotiff_profile(grid, bands.dtype.name, bands.shape[0], nodata)
    with atomic(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(bands)
        if tags:
            dst.update_tags(**{k: str(v) for k, v in tags.items()})
        add_overviews(dst, categorical=bands.dtype.kind in "iu")
