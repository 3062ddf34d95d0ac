"""What screening must find over an area of the sample archive, from the generator's own pixels
(the truth the scenes were drawn from) or from GDAL reading the files, put on a grid with PROJ and
shapely: independent of core's readers, grids, lookups and masks.

The rule is DESIGN.md's: an acquisition's products fill one grid pixel by pixel, in order, each
only where the ones before left no data; a grid pixel takes the value of the product pixel that
contains its centre; a pixel counts when its centre lies inside the area; with the SCL, valid is
every class but 0 and 1, cloud is 8, 9 and 10, shadow 3 and snow 11.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

import numpy as np
from pyproj import Transformer
from rasterio.transform import Affine

NO_DATA = (0, 1)


@lru_cache(maxsize=None)
def _transformer(src: int, dst: int) -> Transformer:
    return Transformer.from_crs(src, dst, always_xy=True)
CLOUD, SHADOW, SNOW = (8, 9, 10), (3,), (11,)


@dataclass
class Layer:
    """One product's raster at one level: a lattice and its values (SCL classes) at pixels."""

    name: str
    epsg: int
    x0: float  # upper-left corner (metres, in ``epsg``)
    y0: float
    res: float
    width: int
    height: int
    values: Callable[[np.ndarray, np.ndarray], np.ndarray]  # (rows, cols) -> SCL classes


@dataclass
class Truth:
    area_pixels: int
    valid_pixels: int
    cloud_pct: float | None
    shadow_pct: float | None
    snow_pct: float | None
    valid_pct: float
    per_layer_valid: dict[str, int] = field(default_factory=dict)  # each product's own valid pixels in the area
    filled_by: dict[str, int] = field(default_factory=dict)  # valid pixels each product filled


def generator_layer(sa, layout, fields, product) -> Layer:
    """``product`` as the generator draws it (20 m SCL, what its SCL.tif holds)."""
    tile = product.tile
    return Layer(product.item_id, tile.epsg, tile.x0, tile.y0, sa.RES, tile.size_px, tile.size_px,
                 lambda rows, cols: sa.render_pixels(layout, fields, product, rows, cols)[0])


def file_layer(name: str, path, level: int = 0) -> Layer:
    """A GeoTIFF read whole by GDAL (rasterio), at full resolution (``level`` 0) or an overview."""
    import rasterio

    options = {} if level == 0 else {"OVERVIEW_LEVEL": level - 1}
    with rasterio.open(path, **options) as ds:
        data, t, epsg = ds.read(1), ds.transform, ds.crs.to_epsg()
    return Layer(name, epsg, t.c, t.f, t.a, data.shape[1], data.shape[0], lambda rows, cols: data[rows, cols])


def overview_levels(path) -> list[float]:
    """Pixel sizes of a GeoTIFF's levels: the full resolution, then each overview (GDAL's view)."""
    import rasterio

    with rasterio.open(path) as ds:
        return [ds.res[0]] + [ds.res[0] * f for f in ds.overviews(1)]


def lattice_grid(epsg: int, x0: float, y0: float, res: float, area, area_epsg: int) -> tuple[int, Affine, tuple[int, int]]:
    """The pixels of the lattice (origin ``x0``, ``y0``, size ``res``) over the whole of ``area``."""
    boundary = np.concatenate([_densified(ring) for ring in _rings(area)])  # edges bend a little in another CRS
    xs, ys = _transformer(area_epsg, epsg).transform(boundary[:, 0], boundary[:, 1])
    xmin, ymin, xmax, ymax = np.min(xs), np.min(ys), np.max(xs), np.max(ys)
    c0, c1 = math.floor((xmin - x0) / res) - 1, math.ceil((xmax - x0) / res) + 1
    r0, r1 = math.floor((y0 - ymax) / res) - 1, math.ceil((y0 - ymin) / res) + 1
    return epsg, Affine(res, 0.0, x0 + c0 * res, 0.0, -res, y0 - r0 * res), (r1 - r0, c1 - c0)


def _rings(area):
    polygons = getattr(area, "geoms", [area])
    return [np.asarray(p.exterior.coords) for p in polygons]


def _densified(ring: np.ndarray, step: float = 10.0) -> np.ndarray:
    points = [ring[:1]]
    for a, b in zip(ring[:-1], ring[1:]):
        n = max(1, int(math.ceil(np.hypot(*(b - a)) / step)))
        points.append(a + (b - a) * (np.arange(1, n + 1)[:, None] / n))
    return np.concatenate(points)


def inside_area(epsg: int, transform: Affine, shape: tuple[int, int], area, area_epsg: int) -> np.ndarray:
    """The grid pixels whose centre lies inside ``area`` (positions projected by PROJ, tested by GEOS)."""
    from shapely import vectorized

    rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
    x, y = transform * (cols + 0.5, rows + 0.5)
    if epsg != area_epsg:
        x, y = _transformer(epsg, area_epsg).transform(x, y)
    return vectorized.contains(area, x, y)


def truth_on_grid(layers: list[Layer], epsg: int, transform: Affine, shape: tuple[int, int], area,
                  area_epsg: int) -> Truth:
    """The fractions of ``area`` on the grid, ``layers`` filling it in their order."""
    inside = inside_area(epsg, transform, shape, area, area_epsg)
    rows, cols = np.nonzero(inside)
    x, y = transform * (cols + 0.5, rows + 0.5)
    scl = np.zeros(rows.size, np.uint8)
    filled = np.zeros(rows.size, bool)
    per_layer, filled_by = {}, {}
    for layer in layers:
        lx, ly = (x, y) if layer.epsg == epsg else _transformer(epsg, layer.epsg).transform(x, y)
        c = np.floor((np.asarray(lx) - layer.x0) / layer.res).astype(int)
        r = np.floor((layer.y0 - np.asarray(ly)) / layer.res).astype(int)
        on = (r >= 0) & (r < layer.height) & (c >= 0) & (c < layer.width)
        values = np.zeros(rows.size, np.uint8)
        if on.any():
            values[on] = layer.values(r[on], c[on])
        valid = on & ~np.isin(values, NO_DATA)
        per_layer[layer.name] = int(valid.sum())
        take = valid & ~filled
        scl[take] = values[take]
        filled |= take
        filled_by[layer.name] = int(take.sum())
    area_pixels, valid_pixels = int(inside.sum()), int(filled.sum())

    def pct(classes) -> float | None:
        return 100.0 * np.count_nonzero(filled & np.isin(scl, classes)) / valid_pixels if valid_pixels else None

    return Truth(area_pixels, valid_pixels, pct(CLOUD), pct(SHADOW), pct(SNOW),
                 100.0 * valid_pixels / area_pixels if area_pixels else 0.0, per_layer, filled_by)


def products_by_item(sa, layout) -> dict:
    """The generator's products by STAC item id."""
    return {p.item_id: p for p in sa._products(layout)}


def fill_order(products: list, first=None) -> list:
    """``first`` (the product whose grid the observation uses), then the newest processing baseline
    first (a reprocessed product replaces the old one where both have data), then by item id."""
    rest = sorted((p for p in products if p is not first), key=lambda p: (-float(p.baseline), p.item_id))
    return ([first] if first is not None else []) + rest


def interior_box(sa, layout, code: str, size_m: float):
    """A square of ``size_m`` (EPSG:27700) inside tile ``code`` and outside every other tile."""
    from shapely.geometry import box

    tiles = {t.code: t for t in layout.tiles}
    free = sa._tile_polygon_27700(tiles[code])
    for other, tile in tiles.items():
        if other != code:
            free = free.difference(sa._tile_polygon_27700(tile))
    c = free.buffer(-size_m / 2 - 50.0).representative_point()
    square = box(c.x - size_m / 2, c.y - size_m / 2, c.x + size_m / 2, c.y + size_m / 2)
    assert free.contains(square)
    return square


def acquisition_truths(sa, layout, area, area_epsg: int, tile_code: str) -> dict:
    """Per datatake (by its sensing date, ``YYYY-MM-DD``) the truth over ``area`` on the 20 m
    lattice of tile ``tile_code``, every product of the datatake filling in :func:`fill_order`."""
    tile = next(t for t in layout.tiles if t.code == tile_code)
    grid = lattice_grid(tile.epsg, tile.x0, tile.y0, sa.RES, area, area_epsg)
    by_datatake: dict = {}
    for p in sa._products(layout):
        by_datatake.setdefault(p.datatake.index, []).append(p)
    out = {}
    for d in layout.datatakes:
        fields = sa.DatatakeFields(layout, d)
        layers = [generator_layer(sa, layout, fields, p) for p in fill_order(by_datatake.get(d.index, []))]
        out[d.sensing.strftime("%Y-%m-%d")] = truth_on_grid(layers, *grid, area, area_epsg)
    return out


def counts_at(sa, layout, x: np.ndarray, y: np.ndarray, epsg: int) -> dict:
    """The year's per-pixel counts at pixel centres (``x``, ``y`` in ``epsg``), as drawn:

    * the mean measure: ``mean_valid`` acquisitions whose SCL is not 0 there, ``mean_cloudy``
      Σ of their ``cloud`` asset / 100;
    * the frequency measure: ``freq_valid`` acquisitions whose SCL is neither 0 nor 1,
      ``freq_cloudy`` those whose SCL is 8, 9 or 10.

    Each acquisition counts once: its products fill in :func:`fill_order`, each where the ones
    before had no observation, a product's pixel being the one that contains the centre.
    """
    by_datatake: dict = {}
    for p in sa._products(layout):
        by_datatake.setdefault(p.datatake.index, []).append(p)
    n = x.size
    out = {"mean_valid": np.zeros(n, int), "mean_cloudy": np.zeros(n), "freq_valid": np.zeros(n, int),
           "freq_cloudy": np.zeros(n, int)}
    for d in layout.datatakes:
        fields = sa.DatatakeFields(layout, d)
        cloud, has_mean = np.zeros(n), np.zeros(n, bool)
        scl_freq, has_freq = np.zeros(n, np.uint8), np.zeros(n, bool)
        for p in fill_order(by_datatake.get(d.index, [])):
            tile = p.tile
            tx, ty = (x, y) if tile.epsg == epsg else _transformer(epsg, tile.epsg).transform(x, y)
            c = np.floor((np.asarray(tx) - tile.x0) / sa.RES).astype(int)
            r = np.floor((tile.y0 - np.asarray(ty)) / sa.RES).astype(int)
            on = np.nonzero((r >= 0) & (r < tile.size_px) & (c >= 0) & (c < tile.size_px))[0]
            if not on.size:
                continue
            scl, value = sa.render_pixels(layout, fields, p, r[on], c[on])
            new = (scl != 0) & ~has_mean[on]
            cloud[on[new]] = value[new]
            has_mean[on[new]] = True
            new = ~np.isin(scl, NO_DATA) & ~has_freq[on]
            scl_freq[on[new]] = scl[new]
            has_freq[on[new]] = True
        out["mean_valid"] += has_mean
        out["mean_cloudy"] += np.where(has_mean, cloud / 100.0, 0.0)
        out["freq_valid"] += has_freq
        out["freq_cloudy"] += has_freq & np.isin(scl_freq, CLOUD)
    return out
