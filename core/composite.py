"""A clear-sky composite: per pixel, the median of the clear observations of each band.

A pixel's observation is clear when the acquisition's mask says clear (not cloud, shadow, snow
or no data). Bands are surface reflectance × 10000 as Earth Search stores them: from processing
baseline 04.00 L2A digital numbers carry a +1000 offset, removed here unless the catalogue says
it already did (``earthsearch:boa_offset_applied``). The output grid is worked in tiles; each
tile holds one stack of its clear observations, so memory depends on the tile, not the area.
"""
from __future__ import annotations

import concurrent.futures as cf
import os
from dataclasses import dataclass

import numpy as np

from .cache import remove_stale_parts
from .masks import CLEAR, MaskError, MaskSpec
from .progress import NullProgress, Progress, check_cancel
from .rasters import NODATA, atomic, geotiff_profile
from .reading import Grid, GridLookup, ReadError, gdal_http_env, read_on_grid
from .screening import datatake_mask_on_grid, group_by_datatake
from .stac import Scene

DEFAULT_BANDS = ("red", "green", "blue")


class CompositeError(Exception):
    """The composite cannot be made; the message says why."""


@dataclass
class CompositeResult:
    path: str
    bands: list[str]
    acquisitions: int
    skipped: int  # acquisitions without the bands
    clear_observations: int


def boa_offset(scene: Scene) -> float:
    """What to add to an L2A digital number to get reflectance × 10000."""
    if scene.boa_offset_applied:
        return 0.0
    try:
        baseline = float(scene.processing_baseline or 0)
    except ValueError:
        baseline = 0.0
    return -1000.0 if baseline >= 4.0 else 0.0


def _bands_on_grid(products: list[Scene], bands, grid: Grid, lookup: GridLookup) -> np.ndarray:
    """(bands, rows, cols) float32 reflectance × 10000 of one acquisition, NaN without data."""
    out = np.full((len(bands),) + grid.shape, np.nan, np.float32)
    for scene in products:
        gaps = np.isnan(out[0])
        if not gaps.any():
            break
        for b, band in enumerate(bands):
            href = scene.asset_href(band)
            values, valid = read_on_grid(href, grid, lookup=lookup)
            reflectance = values.astype(np.float32) + boa_offset(scene)
            take = gaps & valid
            out[b][take] = reflectance[take]
    return out


def _to_cog(src: str, dst: str) -> None:
    """Rewrite ``src`` as a Cloud Optimized GeoTIFF at ``dst`` (written beside it, then renamed)."""
    from osgeo import gdal

    with atomic(dst) as part:
        done = gdal.Translate(part, src, format="COG", creationOptions=[
            "COMPRESS=DEFLATE", "PREDICTOR=2", "OVERVIEW_RESAMPLING=AVERAGE", "BLOCKSIZE=512", "BIGTIFF=IF_SAFER"])
        if done is None:
            raise CompositeError(f"Could not write {dst} as a COG.")
        done = None  # close before the rename


def clear_composite(
    scenes: list[Scene],
    grid: Grid,
    spec: MaskSpec,
    out_path: str,
    bands: tuple[str, ...] = DEFAULT_BANDS,
    tile_px: int = 512,
    concurrency: int = 4,
    progress: Progress | None = None,
) -> CompositeResult:
    """Median of the clear observations of ``bands`` on ``grid``; uint16, 0 = no clear observation."""
    import rasterio
    from rasterio.windows import Window

    progress = progress or NullProgress()
    remove_stale_parts(out_path)  # left by a run killed while writing
    groups = [g for g in group_by_datatake(scenes)]
    usable = [[s for s in g if all(s.asset_href(b) for b in bands)] for g in groups]
    usable = [g for g in usable if g]
    skipped = len(groups) - len(usable)
    if not usable:
        raise CompositeError(f"No scene has all the bands {', '.join(bands)} (asset keys such as red, green, blue).")
    rows, cols = grid.shape
    tiles = [(r0, c0, min(tile_px, rows - r0), min(tile_px, cols - c0))
             for r0 in range(0, rows, tile_px) for c0 in range(0, cols, tile_px)]
    profile = geotiff_profile(grid, "uint16", len(bands), NODATA["uint16"], photometric="RGB" if len(bands) == 3 else None)
    tmp = f"{out_path}.part-{os.getpid()}.tif"  # the GeoTIFF the tiles are written to, then made a COG
    clear_total = 0
    pool = cf.ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="cloudprob-composite")
    try:
        with rasterio.open(tmp, "w", **profile) as dst:
            for n, (r0, c0, h, w) in enumerate(tiles):
                check_cancel(progress)
                from rasterio.transform import Affine

                t = grid.transform
                tile = Grid(grid.crs, Affine(t.a, t.b, t.c + c0 * t.a, t.d, t.e, t.f + r0 * t.e), (h, w))
                lookup = GridLookup(tile)

                def observe(group, tile=tile, lookup=lookup):  # bound now, not when the loop has moved on
                    check_cancel(progress)
                    with gdal_http_env():
                        mask = datatake_mask_on_grid(group, spec, tile, lookup)
                        clear = mask == CLEAR
                        if not clear.any():
                            return None
                        values = _bands_on_grid(group, bands, tile, lookup)
                        values[:, ~clear] = np.nan
                        return values

                stack = []
                for values in pool.map(observe, usable):
                    if values is not None:
                        stack.append(values)
                if stack:
                    cube = np.stack(stack)  # (obs, bands, h, w)
                    clear_total += int(np.isfinite(cube[:, 0]).sum())
                    with np.errstate(all="ignore"):
                        import warnings

                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels: no clear observation
                            median = np.nanmedian(cube, axis=0)
                    out = np.where(np.isfinite(median), np.clip(np.round(median), 1, 65535), 0).astype(np.uint16)
                else:
                    out = np.zeros((len(bands), h, w), np.uint16)
                dst.write(out, window=Window(c0, r0, w, h))
                progress.set_progress(95.0 * (n + 1) / len(tiles))
            if clear_total == 0:
                raise CompositeError(
                    f"None of the {len(usable)} acquisitions has a clear observation in the area ({cols} × {rows} "
                    "pixels): the composite would be no data everywhere. Check the area, its CRS, the period and "
                    "the scenes.")
            for i, band in enumerate(bands, start=1):
                dst.set_band_description(i, band)
            dst.update_tags(units="reflectance x 10000", method="median of clear observations")
        _to_cog(tmp, out_path)
    except (ReadError, MaskError) as exc:
        raise CompositeError(str(exc)) from exc
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if os.path.exists(tmp):
            os.remove(tmp)
    progress.set_progress(100.0)
    return CompositeResult(out_path, list(bands), len(usable), skipped, clear_total)
