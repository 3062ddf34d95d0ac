"""Cloud cover *inside an area* for each acquisition, read from only the area's window.

Products of one datatake (MGRS tiles of one pass, split datastrips, reprocessed duplicates)
are one observation: their masks are put on one grid and combined pixel by pixel (the newest
processing baseline first), so a pixel is counted once whatever the number of products.
"""
from __future__ import annotations

import concurrent.futures as cf
from dataclasses import dataclass, field

import numpy as np

from .masks import NODATA, Fractions, MaskError, MaskSpec, dilate_clouds, fractions, mask_from_score, scl_lookup_table
from .progress import Cancelled, NullProgress, Progress
from .reading import (
    Grid, GridLookup, ReadError, area_in_crs, area_mask, asset_href, lookup_for, network_bytes,
    classes_on_grid, grid_around, network_bytes_reset, read_on_grid, window_grid,
)
from .stac import Scene


@dataclass
class Observation:
    """One acquisition (datatake) over the area."""

    datatake_id: str
    scenes: list[Scene]
    fractions: Fractions | None = None
    error: str | None = None
    grid: Grid | None = field(default=None, repr=False)
    mask: np.ndarray | None = field(default=None, repr=False)  # kept only when asked
    inside: np.ndarray | None = field(default=None, repr=False)

    @property
    def cloud_pct(self) -> float | None:
        return None if self.fractions is None else self.fractions.cloud_pct

    @property
    def scene(self) -> Scene:
        """The product that stands for the observation (the first read)."""
        return self.scenes[0]

    @property
    def nodata_pct(self) -> float | None:
        """Percent of the area without valid data in any of the acquisition's products (None when
        unreadable): the acquisition's own figure, not one product's share of its tile."""
        if self.error is not None or self.fractions is None:
            return None
        return 100.0 - self.fractions.valid_pct

    def summary(self) -> "Acquisition":
        """The acquisition's products and product-level figures together (:func:`acquisition`)."""
        return acquisition(self.scenes)


@dataclass(frozen=True)
class Acquisition:
    """What one acquisition's products say together.

    ``products`` are every product of the acquisition, tile by tile; ``distinct`` keeps one
    product per tile and datastrip (a reprocessed duplicate gives way to the newest processing
    baseline), which is what ``scene_cloud_pct`` is computed over and what is added to a map.
    ``scene_cloud_pct`` is eo:cloud_cover (percent of a product's pixels with data) over all the
    acquisition's pixels with data: the products' values weighted by each product's area with
    data, i.e. by (100 − its no-data percent); min and max are the products' own extremes.
    """

    datatake_id: str
    datetime: str  # the earliest product's, ISO 8601 UTC
    products: tuple[Scene, ...]
    distinct: tuple[Scene, ...]
    scene_cloud_pct: float | None
    scene_cloud_min_pct: float | None
    scene_cloud_max_pct: float | None

    @property
    def item_ids(self) -> list[str]:
        return [s.item_id for s in self.products]

    @property
    def mgrs_tiles(self) -> list[str]:
        return sorted({s.mgrs_tile for s in self.products if s.mgrs_tile})

    @property
    def epsg_codes(self) -> list[int]:
        return sorted({s.epsg for s in self.products if s.epsg})

    @property
    def processing_baselines(self) -> list[str]:
        return sorted({s.processing_baseline for s in self.products if s.processing_baseline})


def distinct_products(products: list[Scene]) -> list[Scene]:
    """One product per MGRS tile and datastrip: where a tile comes in several processing
    baselines (a reprocessed duplicate), only the newest baseline's products; split datastrips
    of one tile (same baseline, parts of the tile) are all kept. Sorted by tile, then item id."""
    newest: dict[str | None, float] = {}
    for scene in products:
        newest[scene.mgrs_tile] = max(newest.get(scene.mgrs_tile, -1.0), _baseline_number(scene))
    kept = [s for s in products if s.mgrs_tile is None or _baseline_number(s) == newest[s.mgrs_tile]]
    return sorted(kept, key=lambda s: (s.mgrs_tile or "", s.item_id))


def acquisition(products: list[Scene]) -> Acquisition:
    """The acquisition-level figures of one datatake's products (see :class:`Acquisition`)."""
    if not products:
        raise ValueError("An acquisition needs at least one product.")
    ordered = tuple(sorted(products, key=lambda s: (s.mgrs_tile or "", -_baseline_number(s), s.item_id)))
    distinct = tuple(distinct_products(list(products)))
    weighted = [(s.scene_cloud, max(0.0, 100.0 - (s.nodata_pct if s.nodata_pct is not None else 0.0)))
                for s in distinct if s.scene_cloud is not None]
    total = sum(w for _, w in weighted)
    if total > 0:
        cloud = sum(c * w for c, w in weighted) / total
    elif weighted:  # every product says it has no data: their plain mean
        cloud = sum(c for c, _ in weighted) / len(weighted)
    else:
        cloud = None
    values = [c for c, _ in weighted]
    first = min(products, key=lambda s: s.when)
    return Acquisition(
        first.datatake_id, first.datetime, ordered, distinct, cloud,
        min(values) if values else None, max(values) if values else None,
    )


def group_by_datatake(scenes: list[Scene]) -> list[list[Scene]]:
    """Scenes grouped by datatake, oldest acquisition first; within a group the newest
    processing baseline first (a reprocessed product replaces the old one where both have data)."""
    groups: dict[str, list[Scene]] = {}
    for scene in scenes:
        groups.setdefault(scene.datatake_id, []).append(scene)
    out = []
    for members in groups.values():
        members.sort(key=lambda s: (-_baseline_number(s), s.item_id))
        out.append(members)
    out.sort(key=lambda g: min(s.datetime for s in g))
    return out


def _baseline_number(scene: Scene) -> float:
    try:
        return float(scene.processing_baseline or 0)
    except ValueError:
        return 0.0


def _touches(scene: Scene, area_lonlat) -> bool:
    if not scene.geometry:
        return True
    from shapely.geometry import shape

    try:
        return shape(scene.geometry).intersects(area_lonlat)
    except Exception:
        return True


def scene_mask_on_grid(scene: Scene, spec: MaskSpec, grid: Grid, lookup: GridLookup | None = None,
                       overviews: bool = False) -> np.ndarray:
    """One product's mask (0 clear, 1 cloud, 2 shadow, 3 snow, 255 no data) on ``grid``; with
    ``overviews`` a grid coarser than the raster reads its COG overviews (fewer bytes)."""
    if spec.source in ("scl", "score"):
        key = (spec.asset or "scl") if spec.source == "scl" else spec.asset
        href = asset_href(scene, key)  # checked against the scene's catalogue when read
        if not href:
            what = "SCL" if spec.source == "scl" else "score raster"
            raise MaskError(f"Scene {scene.item_id} has no '{key}' asset ({what}).")
        if spec.source == "scl":
            # classes through a lookup table on the source window, then one gather
            return classes_on_grid(href, grid, scl_lookup_table(spec), NODATA, lookup=lookup, overviews=overviews)
        values, valid = read_on_grid(href, grid, lookup=lookup, overviews=overviews)
        mask = mask_from_score(values, spec)
        np.copyto(mask, NODATA, where=~valid)
        return mask
    if spec.source == "s2cloudless":
        from .s2cloudless_mask import scene_mask

        return scene_mask(scene, grid, spec.threshold)
    raise MaskError(f"Unknown mask source '{spec.source}'.")


def datatake_mask_on_grid(
    products: list[Scene], spec: MaskSpec, grid: Grid, lookup: GridLookup | None = None,
    executor: cf.Executor | None = None, overviews: bool = False,
) -> np.ndarray:
    """The mask of one acquisition on ``grid``: its products in order (newest baseline first),
    each filling only the pixels the ones before it left without data; clouds dilated last.

    With an ``executor`` the products are read concurrently (each read is a few HTTP round
    trips); otherwise one after another, stopping once the grid is covered.
    """
    from . import http

    lookup = lookup or lookup_for(grid)
    if executor is not None and len(products) > 1:
        # the others in the pool, the first in this thread (a hand-off costs as much as a read);
        # their requests belong to this thread's owner, so Cancel stops them too
        owner = http.current_owner()

        def read(scene):
            with http.owned_by(owner):
                return scene_mask_on_grid(scene, spec, grid, lookup, overviews)

        futures = [executor.submit(read, s) for s in products[1:]]
        try:
            first = scene_mask_on_grid(products[0], spec, grid, lookup, overviews)
        finally:
            wait_all(futures)  # none left running when this one failed
        masks = [first] + [f.result() for f in futures]
    else:
        masks = _sequential_masks(products, spec, grid, lookup, overviews)
    combined = None
    for mask in masks:
        if combined is None:
            combined = mask
        else:
            np.copyto(combined, mask, where=combined == NODATA)
    if combined is None:
        combined = np.full(grid.shape, NODATA, np.uint8)
    return dilate_clouds(combined, spec.buffer_m, grid.resolution)


def wait_all(futures, poll_s: float = 0.05) -> None:
    """Until every future has finished or been cancelled. ``cf.wait`` alone never returns for a
    future that ``Executor.shutdown(cancel_futures=True)`` cancelled before a worker picked it up:
    its waiters are told of a cancel only when a worker takes the item, and the shutdown took it
    off the queue (a screening Cancel left threads blocked here for good, and the process could not
    exit). ``Future.done()`` counts such a cancel, so it is polled."""
    while not all(f.done() for f in futures):
        cf.wait(futures, timeout=poll_s)


def _sequential_masks(products, spec, grid, lookup, overviews):
    covered = np.zeros(grid.shape, bool)
    for scene in products:
        mask = scene_mask_on_grid(scene, spec, grid, lookup, overviews)
        yield mask
        covered |= mask != NODATA
        if covered.all():
            return  # covered: the other products of this acquisition add nothing


# what a catalogue's proj: fields may describe before they are taken on trust: square pixels of 1 m to
# 1 km (Sentinel-2's are 10, 20 and 60 m) and a raster at most 1000 km across (its tiles are 110 km)
METADATA_PIXEL_M = (1.0, 1000.0)
METADATA_EXTENT_M = 1_000_000.0


def _grid_from_metadata(scene: Scene, key: str, area, area_epsg: int, resolution: float, halo_m: float,
                        clip: bool = False):
    """The grid from the item's ``proj:`` fields (no request), or False when they are missing:
    the whole area on the product's lattice, beyond its raster too unless ``clip`` (the
    acquisition's other products fill the rest: an area across MGRS tiles counts every pixel)."""
    from rasterio.transform import Affine

    item = scene.item
    asset = (item.get("assets") or {}).get(key)
    if asset is None:  # the asset may be stored under its band code (SCL, B04…)
        from .stac import ASSET_TO_BAND_CODE

        asset = (item.get("assets") or {}).get(ASSET_TO_BAND_CODE.get(key, key))
    if not asset:
        return False
    props = item.get("properties") or {}
    values = asset.get("proj:transform") or props.get("proj:transform")
    shape = asset.get("proj:shape") or props.get("proj:shape")
    epsg = asset.get("proj:epsg") or scene.epsg
    if not values or not shape or not epsg or len(values) < 6:
        return False
    transform = Affine(*values[:6])
    if transform.b != 0 or transform.d != 0 or transform.a <= 0 or transform.e >= 0:
        return False  # only north-up grids are taken on trust
    a, e, rows, cols = transform.a, -transform.e, int(shape[0]), int(shape[1])
    if not (METADATA_PIXEL_M[0] <= a <= METADATA_PIXEL_M[1] and abs(a - e) <= 1e-6 * a and rows > 0 and cols > 0
            and rows * e <= METADATA_EXTENT_M and cols * a <= METADATA_EXTENT_M):
        # a grid the metadata cannot mean: taken on trust it would size the arrays (15 GiB for pixels of
        # 20 m × 1 µm) or the fractions (1000 km pixels) wrongly
        raise MaskError(
            f"{scene.item_id}: its catalogue's proj:transform and proj:shape describe pixels of {a:g} × {e:g} m, "
            f"{cols} × {rows} of them, which no Sentinel-2 product has: not read (the catalogue's metadata is wrong).")
    return grid_around(f"EPSG:{int(epsg)}", transform, int(shape[1]), int(shape[0]), area, area_epsg, resolution, halo_m,
                       clip=clip)


def _first_grid(scene: Scene, spec: MaskSpec, area, area_epsg: int, resolution: float, halo_m: float,
                clip: bool = False) -> Grid | None:
    """The grid of the first product: its own pixels (or overview-sized pixels) around the
    whole area, beyond its raster's edges too unless ``clip`` (its data is read once, onto this
    grid; the other products fill what it does not cover)."""
    key = {"scl": spec.asset or "scl", "score": spec.asset}.get(spec.source, "red")
    href = asset_href(scene, key) or asset_href(scene, "red") or asset_href(scene, "B04")
    if not href:
        raise MaskError(f"Scene {scene.item_id} has no '{key}' asset.")
    grid = _grid_from_metadata(scene, key, area, area_epsg, resolution, halo_m, clip)
    if grid is False:
        grid = window_grid(href, area, area_epsg, resolution=resolution, halo_m=halo_m, clip=clip)
    if grid is not None and spec.source == "s2cloudless" and abs(grid.resolution - resolution) > 1e-6:
        # s2cloudless reads bands at several resolutions: define the grid at ``resolution``
        from rasterio.transform import Affine

        t = grid.transform
        factor = resolution / grid.resolution
        shape = (max(1, int(np.ceil(grid.shape[0] / factor))), max(1, int(np.ceil(grid.shape[1] / factor))))
        grid = Grid(grid.crs, Affine(resolution, 0, t.c, 0, -resolution, t.f), shape)
    return grid


def observe(
    group: list[Scene], spec: MaskSpec, area, area_epsg: int, resolution: float = 20.0, keep_mask: bool = False,
    executor: cf.Executor | None = None, members: list[Scene] | None = None,
) -> Observation:
    """Cloud fractions of one datatake inside ``area`` (shapely geometry in EPSG ``area_epsg``);
    ``members``: the products of ``group`` whose footprint touches the area, when known."""
    obs = Observation(group[0].datatake_id, list(group))
    if members is None:
        area_lonlat = area_in_crs(area, area_epsg, 4326)
        members = [s for s in group if _touches(s, area_lonlat)]
    if not members:
        obs.fractions = Fractions(None, None, None, 0.0, 0, 0)
        return obs
    obs.scenes = members + [s for s in group if s not in members]
    halo = spec.buffer_m
    try:
        grid = None
        for scene in members:
            # one product: its own raster; several: the whole area, which the others fill
            grid = _first_grid(scene, spec, area, area_epsg, resolution, halo, clip=len(members) == 1)
            if grid is not None:
                obs.scenes = [scene] + [s for s in obs.scenes if s is not scene]
                break
        if grid is None:
            obs.fractions = Fractions(None, None, None, 0.0, 0, 0)
            return obs
        combined = datatake_mask_on_grid([s for s in obs.scenes if s in members], spec, grid, executor=executor,
                                         overviews=True)
        inside = area_mask(area, area_epsg, grid)
        obs.fractions = fractions(combined, inside, spec.count_shadows)
        obs.grid = grid
        if keep_mask:
            obs.mask, obs.inside = combined, inside
    except (ReadError, MaskError) as exc:
        obs.error = str(exc)
    return obs


class ScreeningError(Exception):
    """The screening cannot be made; the message says why."""


@dataclass
class ScreenResult:
    observations: list[Observation]
    bytes_fetched: int
    errors: int


def screen_scenes(
    scenes: list[Scene],
    area,
    area_epsg: int,
    spec: MaskSpec,
    resolution: float = 20.0,
    concurrency: int = 32,
    progress: Progress | None = None,
) -> ScreenResult:
    """Observe every datatake of ``scenes`` over ``area``, ``concurrency`` at a time.

    Returns observations ranked by area cloud share (clearest first; no data and read errors
    last). Progress advances as acquisitions finish; Cancel stops waiting work and raises
    :class:`~core.progress.Cancelled`. Bytes fetched are GDAL's own network statistics.
    """
    progress = progress or NullProgress()
    groups = group_by_datatake(scenes)
    if not groups:
        return ScreenResult([], 0, 0)
    network_bytes_reset()
    observations: list[Observation] = []
    width = max(1, int(concurrency))

    # Acquisitions in one pool, their products' reads in another (a task waiting on its own
    # pool could starve it): latency, not CPU, bounds remote reads, so both are I/O threads.
    readers = cf.ThreadPoolExecutor(max_workers=width, thread_name_prefix="cloudprob-read")
    pool = cf.ThreadPoolExecutor(max_workers=width, thread_name_prefix="cloudprob-screen")

    from . import http

    def work(group: list[Scene], touching: list[Scene]) -> Observation:
        if progress.is_canceled():
            raise Cancelled("cancelled by the user")
        with http.owned_by(progress):  # Cancel stops this acquisition's requests in flight
            return observe(group, spec, area, area_epsg, resolution, executor=readers, members=touching)

    futures: list[cf.Future] = []
    try:
        # which footprints touch the area, here: shapely sets GEOS up anew in each thread it runs in
        area_lonlat = area_in_crs(area, area_epsg, 4326)
        members = [[s for s in g if _touches(s, area_lonlat)] for g in groups]
        if not any(members) and all(s.geometry for g in groups for s in g):
            west, south, east, north = (round(v, 4) for v in area_lonlat.bounds)
            raise ScreeningError(
                f"The area ({west}, {south}, {east}, {north} in longitude/latitude) lies outside the footprint of every "
                f"one of the {len(scenes)} scenes: none covers it, so every acquisition would be 'no data in the "
                "area'. Check the area's coordinates and CRS, or search scenes for this area.")
        futures = [pool.submit(work, g, m) for g, m in zip(groups, members)]
        waiting = set(futures)
        n = 0
        while waiting:
            # Cancel is looked at every tenth of a second, not only when a read ends
            done, waiting = cf.wait(waiting, timeout=0.1, return_when=cf.FIRST_COMPLETED)
            if progress.is_canceled():
                raise Cancelled("cancelled by the user")
            for future in done:
                n += 1
                obs = future.result()
                if obs.error:
                    progress.warning(f"Could not read {', '.join(s.item_id for s in obs.scenes)}: {obs.error}")
                observations.append(obs)
                progress.set_progress(100.0 * n / len(groups))
    except BaseException:
        # the native reader's requests stop at once (they belong to ``progress``); a read GDAL is
        # doing cannot be interrupted and ends by its own deadline, in the background
        pool.shutdown(wait=False, cancel_futures=True)
        readers.shutdown(wait=False, cancel_futures=True)
        cf.wait(futures, timeout=1.0)
        raise
    pool.shutdown(wait=True)
    readers.shutdown(wait=True)
    observations.sort(key=_rank)
    errors = sum(1 for o in observations if o.error)
    return ScreenResult(observations, network_bytes(), errors)


def passes(obs: Observation, max_cloud_pct: float = 100.0, min_valid_pct: float = 0.0) -> bool:
    """Whether an observation is kept by the thresholds. Unreadable ones always are (marked,
    never dropped or counted as clear); one without valid data only when nothing is asked of it."""
    f = obs.fractions
    return passes_values(None if f is None else f.cloud_pct, None if f is None else f.valid_pct, obs.error is not None,
                         max_cloud_pct, min_valid_pct)


def passes_values(cloud_pct: float | None, valid_pct: float | None, unreadable: bool = False,
                  max_cloud_pct: float = 100.0, min_valid_pct: float = 0.0) -> bool:
    """:func:`passes` on an acquisition's figures (percent), e.g. read back from a layer."""
    if unreadable:
        return True
    if valid_pct is None or valid_pct < min_valid_pct:
        return False
    if cloud_pct is None:
        return max_cloud_pct >= 100.0
    return cloud_pct <= max_cloud_pct


def _rank(obs: Observation):
    if obs.error:
        return (2, 0.0, obs.scene.datetime)
    if obs.cloud_pct is None:
        return (1, 0.0, obs.scene.datetime)
    return (0, obs.cloud_pct, obs.scene.datetime)
