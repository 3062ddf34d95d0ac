"""STAC item search for an area and a period, through pystac-client.

Server-side ``query``/``filter``/``sortby`` are used only where the API declares the
conformance class; whatever the server does, every returned item is checked again on the
client (collection, period, area, scene cloud cover), because real servers silently ignore
filters they do not support — Earth Search pages that asked for ``eo:cloud_cover <= 40``
still hold 99.996 % items.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Iterator

from .progress import NullProgress, Progress, check_cancel
from .stac import ItemError, Scene, normalise_item, parse_datetime

EARTH_SEARCH_V1 = "https://earth-search.aws.element84.com/v1"
DEFAULT_COLLECTION = "sentinel-2-c1-l2a"  # Collection 1: carries the `cloud` asset

CONFORMANCE_QUERY = "query"
CONFORMANCE_FILTER = "filter"
CONFORMANCE_SORT = "sort"


class SearchError(Exception):
    """The search cannot be done; the message says why in words a user understands."""


@dataclass(frozen=True)
class SearchRequest:
    """What to search for.

    ``bbox`` is (west, south, east, north) in degrees, EPSG:4326. ``start`` and ``end`` are
    UTC calendar days, both included. ``max_scene_cloud`` is ``eo:cloud_cover`` in percent
    (100 = no filter). ``max_items`` = 0 means all.
    """

    url: str
    collection: str
    bbox: tuple[float, float, float, float]
    start: date
    end: date
    max_scene_cloud: float = 100.0
    max_items: int = 0
    page_size: int = 100
    timeout: float = 30.0  # seconds per HTTP request
    retries: int = 5  # on connection errors, 429 and 5xx, with exponential back-off


@dataclass
class SearchResult:
    """Scenes found, oldest first, and what the search did to get them."""

    scenes: list[Scene]
    server_side: list[str] = field(default_factory=list)  # filters the server was asked to apply
    returned: int = 0  # items the server sent
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> items dropped on the client
    matched: int | None = None  # the server's own count, if it gives one


def validate(request: SearchRequest) -> None:
    """Raise :class:`SearchError` for a request that cannot make sense."""
    if not request.url.strip():
        raise SearchError("No STAC API URL given.")
    if not request.collection.strip():
        raise SearchError("No collection given.")
    if request.end < request.start:
        raise SearchError(f"The end date {request.end.isoformat()} is before the start date {request.start.isoformat()}.")
    west, south, east, north = request.bbox
    if not (-180.0 <= west <= 180.0 and -180.0 <= east <= 180.0 and -90.0 <= south <= north <= 90.0):
        raise SearchError(f"The area {request.bbox} is not a valid longitude/latitude box.")
    if west > east:
        raise SearchError("Areas crossing the antimeridian are not supported; split the area in two.")
    if not 0.0 <= request.max_scene_cloud <= 100.0:
        raise SearchError(f"The scene cloud limit must be between 0 and 100 %, not {request.max_scene_cloud}.")
    if request.max_items < 0:
        raise SearchError("The maximum number of scenes cannot be negative (0 means all).")


def _stac_io(request: SearchRequest):
    from pystac_client.stac_api_io import StacApiIO
    from urllib3.util.retry import Retry

    retry = Retry(
        total=request.retries,
        backoff_factor=0.5,
        status_forcelist=(429, 500, 502, 503, 504),
        allowed_methods=None,  # item search is a POST; retrying it is safe (it only reads)
        respect_retry_after_header=True,
        raise_on_status=False,
    )
    return StacApiIO(timeout=request.timeout, max_retries=retry)


def _explain(url: str, exc: BaseException) -> SearchError:
    """Translate what requests/pystac raise into a sentence naming the problem.

    pystac-client wraps transport errors in its own ``APIError``, so look through the chain
    of causes and, as a last resort, at the text urllib3 leaves in the message.
    """
    import requests

    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    text = str(exc)
    if any(isinstance(e, requests.exceptions.Timeout) for e in chain) or "timed out" in text.lower():
        return SearchError(f"The STAC API at {url} did not answer in time: {text}")
    if any(isinstance(e, requests.exceptions.ConnectionError) for e in chain) or any(
        marker in text for marker in ("NewConnectionError", "Connection refused", "Name or service not known")
    ):
        return SearchError(f"Cannot reach the STAC API at {url}: {text}")
    not_stac = ("JSONDecodeError", "STACTypeError", "ClientTypeError", "does not represent a STACObject")
    if any(isinstance(e, (json.JSONDecodeError, KeyError, TypeError)) for e in chain) or any(
        marker in type(e).__name__ or marker in str(e) for e in chain for marker in not_stac
    ):
        return SearchError(f"{url} does not answer as a STAC API (not STAC JSON: {text})")
    return SearchError(f"The STAC API at {url} failed: {text}")


def open_client(request: SearchRequest):
    """Open the API and check it offers item search; raise :class:`SearchError` otherwise."""
    from pystac_client import Client

    try:
        client = Client.open(request.url, stac_io=_stac_io(request))
    except SearchError:
        raise
    except Exception as exc:  # requests, pystac and JSON errors all mean the same to the user
        raise _explain(request.url, exc) from exc
    conforms = client.to_dict().get("conformsTo") or []
    if not any("item-search" in c for c in conforms):
        raise SearchError(
            f"{request.url} is not a STAC API with item search (it declares no 'item-search' conformance class)."
        )
    return client


def conforms(client: Any, name: str) -> bool:
    """Whether the API declares the named conformance class (``query``, ``filter``, ``sort``)."""
    declared = client.to_dict().get("conformsTo") or []
    if name == CONFORMANCE_QUERY:
        return any(c.rstrip("/").endswith("item-search#query") for c in declared)
    if name == CONFORMANCE_FILTER:
        return any(c.rstrip("/").endswith("item-search#filter") for c in declared)
    if name == CONFORMANCE_SORT:
        return any(c.rstrip("/").endswith("item-search#sort") for c in declared)
    raise ValueError(name)


def check_collection(client: Any, request: SearchRequest) -> None:
    """Raise :class:`SearchError` naming the collections on offer if ours is not one of them."""
    try:
        ids = [c.id for c in client.get_collections()]
    except Exception as exc:
        raise _explain(request.url, exc) from exc
    if ids and request.collection not in ids:
        shown = ", ".join(sorted(ids)[:20]) + (" …" if len(ids) > 20 else "")
        raise SearchError(f"The STAC API at {request.url} has no collection '{request.collection}'. It offers: {shown}.")


def _period(request: SearchRequest) -> tuple[datetime, datetime]:
    start = datetime.combine(request.start, time(0, 0), tzinfo=timezone.utc)
    end = datetime.combine(request.end + timedelta(days=1), time(0, 0), tzinfo=timezone.utc)
    return start, end  # end excluded


def client_side_reason(scene: Scene, request: SearchRequest) -> str | None:
    """Why ``scene`` does not belong in the result of ``request``, or None if it does."""
    if scene.collection is not None and scene.collection != request.collection:
        return "other collection"
    start, end = _period(request)
    when = parse_datetime(scene.datetime)
    if not start <= when < end:
        return "outside the period"
    if scene.geometry is not None and not _intersects(scene.geometry, request.bbox):
        return "outside the area"
    if request.max_scene_cloud < 100.0:
        if scene.scene_cloud is None:
            return "no eo:cloud_cover"
        if scene.scene_cloud > request.max_scene_cloud:
            return "scene cloud above the limit"
    return None


def _intersects(geometry: dict, bbox: tuple[float, float, float, float]) -> bool:
    from shapely.geometry import box, shape

    try:
        return shape(geometry).intersects(box(*bbox))
    except Exception:  # an unreadable footprint is not a reason to lose a scene
        return True


def _pages(client: Any, request: SearchRequest, server_side: list[str]) -> Iterator[dict]:
    start, end = _period(request)
    kwargs: dict[str, Any] = {
        "collections": [request.collection],
        "bbox": list(request.bbox),
        "datetime": [start, end - timedelta(microseconds=1)],
        "limit": request.page_size,
    }
    if request.max_scene_cloud < 100.0:
        if conforms(client, CONFORMANCE_QUERY):
            kwargs["query"] = {"eo:cloud_cover": {"lte": request.max_scene_cloud}}
            server_side.append("query eo:cloud_cover")
        elif conforms(client, CONFORMANCE_FILTER):
            kwargs["filter"] = {"op": "<=", "args": [{"property": "eo:cloud_cover"}, request.max_scene_cloud]}
            kwargs["filter_lang"] = "cql2-json"
            server_side.append("filter eo:cloud_cover")
    if conforms(client, CONFORMANCE_SORT):
        kwargs["sortby"] = [{"field": "properties.datetime", "direction": "asc"}]
        server_side.append("sortby datetime")
    search = client.search(**kwargs)
    yield from search.pages_as_dicts()


def _matched(page: dict) -> int | None:
    for value in (page.get("numberMatched"), (page.get("context") or {}).get("matched")):
        if isinstance(value, int) and value >= 0:
            return value
    return None


def search_scenes(request: SearchRequest, progress: Progress | None = None) -> SearchResult:
    """Search the API for Sentinel-2 scenes of ``request``; oldest first.

    Progress advances as pages arrive; Cancel is honoured between pages (raises
    :class:`~core.progress.Cancelled`). Raises :class:`SearchError` for an unreachable API,
    something that is not a STAC API, an unknown collection, a bad request or an empty result.
    """
    progress = progress or NullProgress()
    validate(request)
    client = open_client(request)
    check_collection(client, request)
    check_cancel(progress)

    result = SearchResult(scenes=[])
    seen: set[str] = set()
    pages = _pages(client, request, result.server_side)
    if result.server_side:
        progress.info("Server-side: " + ", ".join(result.server_side) + " (checked again on the client).")
    page_number = 0
    try:
        while True:
            check_cancel(progress)
            try:
                page = next(pages)
            except StopIteration:
                break
            except Exception as exc:
                raise _explain(request.url, exc) from exc
            page_number += 1
            if result.matched is None:
                result.matched = _matched(page)
            features = page.get("features") or []
            result.returned += len(features)
            for feature in features:
                try:
                    scene = normalise_item(feature)
                except ItemError as exc:
                    result.dropped["not a usable item"] = result.dropped.get("not a usable item", 0) + 1
                    progress.warning(f"Skipped an item: {exc}")
                    continue
                if scene.item_id in seen:
                    result.dropped["repeated on another page"] = result.dropped.get("repeated on another page", 0) + 1
                    continue
                seen.add(scene.item_id)
                reason = client_side_reason(scene, request)
                if reason is not None:
                    result.dropped[reason] = result.dropped.get(reason, 0) + 1
                    continue
                result.scenes.append(scene)
                if request.max_items and len(result.scenes) >= request.max_items:
                    break
            total = result.matched
            if request.max_items:
                total = min(total, request.max_items) if total else request.max_items
                progress.set_progress(min(99.0, 100.0 * len(result.scenes) / request.max_items))
            elif total:
                progress.set_progress(min(99.0, 100.0 * result.returned / total))
            progress.info(f"Page {page_number}: {len(features)} items, {len(result.scenes)} scenes kept so far.")
            if request.max_items and len(result.scenes) >= request.max_items:
                break
    finally:
        pages.close()

    for reason, count in sorted(result.dropped.items()):
        if reason == "scene cloud above the limit" and any("cloud" in s for s in result.server_side):
            progress.warning(
                f"The server ignored the cloud filter for {count} items (eo:cloud_cover above "
                f"{request.max_scene_cloud:g} %); they were dropped on the client."
            )
        else:
            progress.info(f"Dropped {count} items: {reason}.")
    if not result.scenes:
        raise SearchError(
            f"No scenes of '{request.collection}' found at {request.url} for the area "
            f"{tuple(round(v, 5) for v in request.bbox)} between {request.start.isoformat()} and "
            f"{request.end.isoformat()}"
            + (f" with scene cloud cover at most {request.max_scene_cloud:g} %" if request.max_scene_cloud < 100 else "")
            + (f" ({result.returned} items returned, all dropped: {result.dropped})" if result.returned else "")
            + "."
        )
    result.scenes.sort(key=lambda s: (s.datetime, s.item_id))
    progress.set_progress(100.0)
    return result
