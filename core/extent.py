"""An extent typed as four numbers: how QGIS reads it, and what it probably meant when that
reading is unlikely to be what the user wanted.

QGIS reads an extent given as text as ``xmin,xmax,ymin,ymax [CRS]``; the other common order,
a bbox ``xmin,ymin,xmax,ymax``, is read without a word as another box. QGIS also swaps a pair
given the wrong way round, and its dialog writes the extent back with every pair in order, so
by the time the plugin sees a bbox typed in the dialog its original order is lost: the box the
user meant is then one of two, both listed. Degrees typed under a projected CRS (EPSG:27700)
make a box of a fraction of a metre near the CRS's origin; latitude and longitude swapped make
a box on the other side of the world. Each is named here with the fix, in plain sentences.

Coordinates are in the CRS's units (degrees for a geographic CRS, else usually metres).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

_NUMBER = r"([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)"
_EXTENT_TEXT = re.compile(r"^\s*" + r"\s*,\s*".join([_NUMBER] * 4) + r"\s*(?:\[(?P<crs>[^\]]*)\])?\s*$")
AMBIGUOUS_RATIO = 10.0  # a bbox reading this many times narrower and lower than QGIS's: warn (never refuse)
SMALLEST_PIXEL_M = 10.0  # Sentinel-2's finest pixel: an area narrower than this in metres is no area to study
KM_PER_DEGREE = 111.32  # along the equator and a meridian, near enough to say "about … km"


class ExtentError(ValueError):
    """An extent that cannot be what was meant; the message says how it was read and what to type."""


@dataclass(frozen=True)
class TypedExtent:
    """Four numbers in the order typed: QGIS reads x a…b, y c…d."""

    a: float
    b: float
    c: float
    d: float
    crs: str  # the text in brackets, as typed ("" if none)
    text: str  # the whole extent, as typed

    def as_text(self, a, b, c, d, crs: str | None = None) -> str:
        crs = self.crs if crs is None else crs
        return f"'{number(a)},{number(b)},{number(c)},{number(d)}" + (f" [{crs}]" if crs else "") + "'"


def read_extent_text(value) -> TypedExtent | None:
    """The extent's four numbers in the order typed, or None for anything that is not an extent
    typed as text (a layer, a rectangle object: those carry no order that could be wrong)."""
    if not isinstance(value, str):
        return None
    match = _EXTENT_TEXT.match(value)
    if match is None:
        return None
    a, b, c, d = (float(match.group(i)) for i in range(1, 5))
    return TypedExtent(a, b, c, d, (match.group("crs") or "").strip(), value.strip())


def number(v: float) -> str:
    return f"{v:.15g}"


def size_text(width: float, height: float, geographic: bool, metres: bool = True) -> str:
    """``width`` × ``height`` in the CRS's units, as a person says them (km from 1000 m on)."""
    if geographic:
        return f"{width:.4g}° × {height:.4g}°"
    if metres:
        if max(width, height) >= 1000:
            return f"{width / 1000:.4g} × {height / 1000:.4g} km"
        return f"{width:.4g} × {height:.4g} m"
    return f"{width:.4g} × {height:.4g} map units"


def _degrees_km(west: float, east: float, south: float, north: float) -> str:
    """About how many km a longitude/latitude box spans."""
    middle = math.radians((south + north) / 2)
    return (f"about {(east - west) * KM_PER_DEGREE * math.cos(middle):.3g} × "
            f"{(north - south) * KM_PER_DEGREE:.3g} km")


def _lonlat(west, east, south, north) -> bool:
    return -180 <= west < east <= 180 and -90 <= south < north <= 90


def check_typed_extent(extent: TypedExtent, geographic: bool, metres: bool = True) -> str | None:
    """Raise :class:`ExtentError` for an extent that cannot be what was meant; return a warning
    (or None) for one that can, but probably is not.

    With a, b, c, d as typed (QGIS: x a…b, y c…d; bbox order: x a…c, y b…d):

    - a > b or c > d: never QGIS's own order (which puts each minimum first), so no
      legitimate extent is refused; the message offers the bbox reading when it is a box.
    - In a geographic CRS, y beyond ±90° (no latitude is), with the same offer.
    - Zero width or height (an area is needed).
    - In a projected CRS in metres, numbers that all fit longitudes and latitudes and a box
      narrower or lower than Sentinel-2's finest pixel (10 m): degrees labelled with the
      wrong CRS; the message offers them in EPSG:4326 (no study area is smaller than a pixel).
    - A warning, never an error, when both readings are boxes and the bbox reading is at least
      ten times narrower *and* lower: the corners then lie near the line x = y, as those of a
      small box given in bbox order do, in the order typed or after QGIS put each pair in order
      (its dialog does, without a word). A legitimate extent can look like that too. Both
      boxes that bbox could have been are offered, since the pairs' order may be lost.
    """
    a, b, c, d = extent.a, extent.b, extent.c, extent.d
    bbox_ok = a < c and b < d
    offer = (
        f" These numbers look like bbox order (xmin,ymin,xmax,ymax); QGIS reads an extent as "
        f"xmin,xmax,ymin,ymax. Did you mean {extent.as_text(a, c, b, d)} ({size_text(c - a, d - b, geographic, metres)})?"
        if bbox_ok else " Write the extent as xmin,xmax,ymin,ymax."
    )
    if a > b or c > d:
        wrong = f"xmin {number(a)} is greater than xmax {number(b)}" if a > b else \
            f"ymin {number(c)} is greater than ymax {number(d)}"
        raise ExtentError(
            f"In the extent '{extent.text}', {wrong}: QGIS would silently swap them and use "
            f"{size_text(abs(b - a), abs(d - c), geographic, metres)}.{offer}")
    if geographic and (c < -90.0 or d > 90.0):
        raise ExtentError(f"The extent '{extent.text}' has latitudes {number(c)}…{number(d)}, beyond ±90°.{offer}")
    if (b - a) == 0 or (d - c) == 0:
        raise ExtentError(
            f"The extent '{extent.text}' has no area (zero width or height): give an area, not a point "
            f"or a line.{offer if bbox_ok else ''}")
    if not geographic and metres and min(b - a, d - c) < SMALLEST_PIXEL_M:
        readings = []
        if _lonlat(a, b, c, d):
            readings.append(f"{extent.as_text(a, b, c, d, 'EPSG:4326')} (longitude {number(a)}…{number(b)}, "
                            f"latitude {number(c)}…{number(d)}, {_degrees_km(a, b, c, d)})")
        if _lonlat(c, d, a, b):
            readings.append(f"{extent.as_text(c, d, a, b, 'EPSG:4326')} (longitude {number(c)}…{number(d)}, "
                            f"latitude {number(a)}…{number(b)}, {_degrees_km(c, d, a, b)})")
        if readings:
            raise ExtentError(
                f"The extent '{extent.text}' is {size_text(b - a, d - c, False, True)}"
                f"{' in ' + extent.crs if extent.crs else ''}, smaller than one Sentinel-2 pixel, and its numbers "
                f"look like degrees of longitude and latitude. Did you mean {' or '.join(readings)}?")
    if bbox_ok and (c - a) * AMBIGUOUS_RATIO <= (b - a) and (d - b) * AMBIGUOUS_RATIO <= (d - c):
        first = f"{extent.as_text(a, c, b, d)} (x {number(a)}…{number(c)}, y {number(b)}…{number(d)})"
        second = f"{extent.as_text(b, d, a, c)} (x {number(b)}…{number(d)}, y {number(a)}…{number(c)})"
        if geographic and not _lonlat(b, d, a, c):
            choices = first
        else:
            choices = f"either {first} or {second}"
        return (
            f"The extent '{extent.text}' is read as xmin,xmax,ymin,ymax: x {number(a)}…{number(b)}, y "
            f"{number(c)}…{number(d)} ({size_text(b - a, d - c, geographic, metres)}). Its corners lie near the line "
            f"x = y, as those of a small box given in bbox order (xmin,ymin,xmax,ymax) do, also once QGIS has put "
            f"each pair in order (its dialog does). If you meant a box of "
            f"{size_text(c - a, d - b, geographic, metres)}, stop and give {choices} instead.")
    return None


def no_scene_hints(extent: TypedExtent, geographic: bool) -> list[str]:
    """Other readings of an extent over which no scene was found, most likely first: latitude
    and longitude swapped (a geographic CRS), or the numbers in bbox order."""
    a, b, c, d = extent.a, extent.b, extent.c, extent.d
    hints = []
    if geographic and _lonlat(c, d, a, b):
        hints.append(f"If latitude and longitude are swapped, the area you meant is {extent.as_text(c, d, a, b)} "
                     f"(longitude {number(c)}…{number(d)}, latitude {number(a)}…{number(b)}).")
    if a < c and b < d:  # bbox order, as typed or with each pair put in order by QGIS (see the module)
        boxes = [extent.as_text(x0, x1, y0, y1) for x0, x1, y0, y1 in ((a, c, b, d), (b, d, a, c))
                 if not geographic or _lonlat(x0, x1, y0, y1)]
        if boxes:
            hints.append("If the numbers are in bbox order (xmin,ymin,xmax,ymax), the area you meant is "
                         f"{' or '.join(boxes)}.")
    if not geographic:
        hints.append(f"Check that the numbers are coordinates in {extent.crs or 'the CRS given'}.")
    return hints
