"""Cloud masks from the SCL, from score rasters (Cloud Score+, Sentinel Hub CLP, s2cloudless
probability) and from s2cloudless run on L1C bands — one mask vocabulary for every stage.

A mask is uint8: 0 clear, 1 cloud, 2 cloud shadow, 3 snow/ice, 255 no data.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .rasters import NODATA as RASTER_NODATA

CLEAR, CLOUD, SHADOW, SNOW, NODATA = 0, 1, 2, 3, RASTER_NODATA["uint8"]
MASK_LEGEND = {CLEAR: "clear", CLOUD: "cloud", SHADOW: "cloud shadow", SNOW: "snow / ice", NODATA: "no data"}

SCL_NAMES = {
    0: "no data", 1: "saturated or defective", 2: "dark area pixels", 3: "cloud shadows", 4: "vegetation",
    5: "not vegetated", 6: "water", 7: "unclassified", 8: "cloud medium probability",
    9: "cloud high probability", 10: "thin cirrus", 11: "snow or ice",
}
SCL_SHADOW, SCL_SNOW = 3, 11
DEFAULT_CLOUD_CLASSES = (8, 9, 10)
DEFAULT_INVALID_CLASSES = (0, 1)


class MaskError(ValueError):
    """A mask cannot be made (missing asset, missing package…); the message says why."""


@dataclass(frozen=True)
class MaskSpec:
    """How to turn a scene into a mask.

    ``source``: ``scl``, ``score`` (a raster under ``asset`` compared with ``threshold``) or
    ``s2cloudless`` (the model run on L1C bands). For ``score``: ``cloud_when`` is ``above``
    (cloud where value ≥ threshold: CLP, s2cloudless probability) or ``below`` (cloud where
    value < threshold: Cloud Score+ ``cs``/``cs_cdf``, which score clearness); ``scale``
    converts stored values to 0–1 (1/255 for CLP). ``buffer_m`` dilates clouds (metres).
    """

    source: str = "scl"
    cloud_classes: tuple[int, ...] = DEFAULT_CLOUD_CLASSES
    invalid_classes: tuple[int, ...] = DEFAULT_INVALID_CLASSES
    count_shadows: bool = False
    asset: str = "scl"
    threshold: float = 0.4
    cloud_when: str = "above"
    scale: float = 1.0
    buffer_m: float = 0.0
    extra: dict = field(default_factory=dict, compare=False)

    def with_buffer(self, metres: float) -> "MaskSpec":
        return replace(self, buffer_m=float(metres))


# Named presets offered to users (MASK_SOURCE); each is a MaskSpec.
PRESETS: dict[str, MaskSpec] = {
    "scl": MaskSpec(),
    "cloud_score_plus": MaskSpec(source="score", asset="cs_cdf", threshold=0.60, cloud_when="below"),
    "sentinelhub_clp": MaskSpec(source="score", asset="clp", threshold=0.4, cloud_when="above", scale=1 / 255),
    "s2cloudless_probability": MaskSpec(source="score", asset="cloud_probability", threshold=0.4, cloud_when="above"),
    "s2cloudless": MaskSpec(source="s2cloudless", asset="", threshold=0.4),
}
PRESET_LABELS = {
    "scl": "Scene classification layer (SCL)",
    "cloud_score_plus": "Cloud Score+ (cs_cdf)",
    "sentinelhub_clp": "Sentinel Hub CLP",
    "s2cloudless_probability": "s2cloudless probability",
    "s2cloudless": "s2cloudless model (L1C)",
}


def preset(name: str) -> MaskSpec:
    """The :data:`PRESETS` entry ``name``; raises :class:`MaskError` naming the choices."""
    try:
        return PRESETS[name]
    except KeyError:
        raise MaskError(f"Unknown mask source '{name}'; choose one of {', '.join(PRESETS)}.") from None


def parse_classes(text: str) -> tuple[int, ...]:
    """``"8,9,10"`` → (8, 9, 10); SCL codes 0–11 only."""
    values = []
    for part in str(text).replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = int(part)
        except ValueError:
            raise MaskError(f"'{part}' is not an SCL class number (0–11).") from None
        if not 0 <= value <= 11:
            raise MaskError(f"{value} is not an SCL class (0–11).")
        values.append(value)
    if not values:
        raise MaskError("No cloud classes given.")
    return tuple(sorted(set(values)))


def scl_lookup_table(spec: MaskSpec) -> np.ndarray:
    """Mask class for each of the 256 possible SCL byte values (codes above 11 are no data)."""
    lut = np.full(256, NODATA, dtype=np.uint8)
    lut[:12] = CLEAR
    lut[SCL_SNOW] = SNOW
    lut[SCL_SHADOW] = SHADOW
    lut[list(spec.cloud_classes)] = CLOUD
    lut[list(spec.invalid_classes)] = NODATA
    return lut


def mask_from_scl(scl: np.ndarray, spec: MaskSpec) -> np.ndarray:
    """Mask classes from SCL codes. Cloud classes win over shadow and snow."""
    return np.take(scl_lookup_table(spec), scl.astype(np.uint8, copy=False))


def mask_from_score(values: np.ndarray, spec: MaskSpec, nodata: float | None = None) -> np.ndarray:
    """Mask classes from a score raster (no shadow or snow information in a score)."""
    score = values.astype(np.float64) * spec.scale
    cloudy = score >= spec.threshold if spec.cloud_when == "above" else score < spec.threshold
    out = np.where(cloudy, CLOUD, CLEAR).astype(np.uint8)
    invalid = ~np.isfinite(score)
    if nodata is not None and not (isinstance(nodata, float) and np.isnan(nodata)):
        invalid |= values == nodata
    out[invalid] = NODATA
    return out


def dilate_clouds(mask: np.ndarray, buffer_m: float, pixel_m: float) -> np.ndarray:
    """Grow cloud pixels by ``buffer_m`` metres (a disc); no-data stays no-data."""
    if buffer_m <= 0:
        return mask
    from scipy.ndimage import binary_dilation

    r = int(np.floor(buffer_m / pixel_m + 1e-9))
    if r < 1:
        return mask
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    disc = (xx**2 + yy**2) <= r * r
    grown = binary_dilation(mask == CLOUD, structure=disc)
    out = mask.copy()
    out[grown & (mask != NODATA)] = CLOUD
    return out


@dataclass
class Fractions:
    """Shares of an area, in percent. Cloud, shadow and snow are shares of the valid pixels;
    ``valid_pct`` is the share of the area with valid data. None where undefined."""

    cloud_pct: float | None
    shadow_pct: float | None
    snow_pct: float | None
    valid_pct: float
    valid_pixels: int
    area_pixels: int


def fractions(mask: np.ndarray, inside: np.ndarray | None = None, count_shadows: bool = False) -> Fractions:
    """Cloud / shadow / snow / valid fractions of ``mask`` over the pixels where ``inside``.

    With ``count_shadows`` the cloud share includes shadows (shadows are still reported).
    """
    m = mask if inside is None else mask[inside]
    area = int(m.size)
    valid = int(np.count_nonzero(m != NODATA))
    cloud = int(np.count_nonzero(m == CLOUD))
    shadow = int(np.count_nonzero(m == SHADOW))
    snow = int(np.count_nonzero(m == SNOW))
    if count_shadows:
        cloud += shadow

    def pct(n: int) -> float | None:
        return 100.0 * n / valid if valid else None

    return Fractions(pct(cloud), pct(shadow), pct(snow), 100.0 * valid / area if area else 0.0, valid, area)
