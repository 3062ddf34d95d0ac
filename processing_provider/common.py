"""Parameters and translations shared by the algorithms that read scenes and make masks."""
from __future__ import annotations

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsFeatureRequest,
    QgsGeometry,
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
)

from ..core.extent import ExtentError, check_typed_extent, no_scene_hints, read_extent_text
from ..core.masks import PRESET_LABELS, PRESETS, MaskError, MaskSpec, parse_classes, preset
from ..core.stac import ItemError, Scene, normalise_item, scene_from_json
from .params import with_help

MASK_SOURCE = "MASK_SOURCE"
CLOUD_CLASSES = "CLOUD_CLASSES"
COUNT_SHADOWS = "COUNT_SHADOWS"
SCORE_ASSET = "SCORE_ASSET"
THRESHOLD = "THRESHOLD"
BUFFER = "BUFFER"
MASK_SOURCES = list(PRESETS)


def add_scenes_parameter(alg) -> None:
    """The SCENES input every algorithm that reads scenes declares: a layer of Search Sentinel-2 scenes."""
    alg.addParameter(with_help(QgsProcessingParameterFeatureSource(
        alg.SCENES, alg.tr("Scenes (from Search Sentinel-2 scenes)"), [QgsProcessing.SourceType.TypeVectorPolygon]),
        alg.tr("The output of 'Search Sentinel-2 scenes' or 'Cloud cover inside the area' (it carries each "
               "scene's STAC item); no default.")))


def add_mask_parameters(alg, with_shadows: bool = True) -> None:
    """MASK_SOURCE, CLOUD_CLASSES, COUNT_SHADOWS, SCORE_ASSET, THRESHOLD and BUFFER."""
    alg.addParameter(with_help(QgsProcessingParameterEnum(
        MASK_SOURCE, alg.tr("Mask source"), options=[PRESET_LABELS[k] for k in MASK_SOURCES], defaultValue=0),
        alg.tr("The scene classification layer (SCL), or a score raster under a STAC asset: Cloud Score+ cs_cdf "
               "(clear where at or above the threshold), Sentinel Hub CLP (0–255) or an s2cloudless probability "
               "(cloud where at or above the threshold), or the s2cloudless model run on the L1C bands. "
               "Default: the SCL.")))
    alg.addParameter(with_help(QgsProcessingParameterString(
        CLOUD_CLASSES, alg.tr("SCL classes that are cloud"), "8,9,10"),
        alg.tr("Comma separated SCL class codes. Default: 8,9,10 (cloud medium and high probability, thin cirrus).")))
    if with_shadows:
        alg.addParameter(with_help(QgsProcessingParameterBoolean(
            COUNT_SHADOWS, alg.tr("Count cloud shadows (SCL 3) as cloud"), False),
            alg.tr("Ticked, SCL class 3 (cloud shadow) counts as cloudy too. Default: unticked.")))
    alg.addParameter(with_help(QgsProcessingParameterString(
        SCORE_ASSET, alg.tr("Score raster asset"), "", optional=True),
        alg.tr("STAC asset key of the score raster. Default: empty, the mask source's own (e.g. cs_cdf).")))
    alg.addParameter(with_help(QgsProcessingParameterNumber(
        THRESHOLD, alg.tr("Score threshold (0–1)"), QgsProcessingParameterNumber.Type.Double, None, True, 0.0, 1.0),
        alg.tr("A score from 0 to 1 (CLP's 0–255 scaled to it). Default: empty, the mask source's own (Cloud "
               "Score+ 0.60, CLP and s2cloudless 0.4).")))
    alg.addParameter(with_help(QgsProcessingParameterNumber(
        BUFFER, alg.tr("Grow clouds by (metres)"), QgsProcessingParameterNumber.Type.Double, 0.0, False, 0.0,
        5000.0), alg.tr("Cloud pixels are dilated by this distance, in metres (0–5000). Default: 0, no growing.")))


def mask_spec(alg, parameters, context) -> MaskSpec:
    """The MaskSpec the user asked for; QgsProcessingException on nonsense."""
    from dataclasses import replace

    name = MASK_SOURCES[alg.parameterAsEnum(parameters, MASK_SOURCE, context)]
    try:
        spec = preset(name)
        changes = {"cloud_classes": parse_classes(alg.parameterAsString(parameters, CLOUD_CLASSES, context))}
    except MaskError as exc:
        raise QgsProcessingException(str(exc)) from exc
    if alg.parameterDefinition(COUNT_SHADOWS) is not None:
        changes["count_shadows"] = alg.parameterAsBool(parameters, COUNT_SHADOWS, context)
    asset = (alg.parameterAsString(parameters, SCORE_ASSET, context) or "").strip()
    if asset and spec.source == "score":
        changes["asset"] = asset
    if parameters.get(THRESHOLD) not in (None, ""):
        changes["threshold"] = alg.parameterAsDouble(parameters, THRESHOLD, context)
    changes["buffer_m"] = alg.parameterAsDouble(parameters, BUFFER, context)
    return replace(spec, **changes)


def check_scenes_layer(alg, parameters, name: str, context) -> None:
    """The scenes layer opens, holds features and carries the STAC items later stages read."""
    source = alg.parameterAsSource(parameters, name, context)
    if source is None:
        raise QgsProcessingException(alg.invalidSourceError(parameters, name))
    if source.fields().indexOf("stac_items") < 0 and source.fields().indexOf("stac_item") < 0:
        raise QgsProcessingException(
            "The scenes layer has no 'stac_item' field: use the output of 'Search Sentinel-2 scenes' "
            "(cloudprob:searchscenes)."
        )
    if source.featureCount() == 0:
        raise QgsProcessingException("The scenes layer holds no scenes.")


def scenes_from_source(source, feedback, selected_ids=None) -> list[tuple[Scene, object]]:
    """(Scene, feature) for each product of a scenes layer: one per feature of the output of
    cloudprob:searchscenes (``stac_item``), every product of each acquisition of the output of
    cloudprob:screenscenes (``stac_items``, a JSON array)."""
    import json

    if source is None:
        raise QgsProcessingException("No scenes layer given.")
    many = source.fields().indexOf("stac_items") >= 0
    if not many and source.fields().indexOf("stac_item") < 0:
        raise QgsProcessingException(
            "The scenes layer has no 'stac_item' field: use the output of 'Search Sentinel-2 scenes' "
            "(cloudprob:searchscenes)."
        )
    out = []
    request = QgsFeatureRequest()
    if selected_ids:
        request.setFilterFids(list(selected_ids))
    for feature in source.getFeatures(request):
        try:
            if many:
                items = json.loads(feature["stac_items"])
                if not isinstance(items, list):
                    raise ValueError("'stac_items' is not a list of STAC items")
                out.extend((normalise_item(item), feature) for item in items)
            else:
                out.append((scene_from_json(feature["stac_item"]), feature))
        except (ItemError, ValueError, TypeError) as exc:
            feedback.pushWarning(f"Feature {feature.id()} does not hold a readable STAC item ({exc}); skipped.")
    return out


def typed_extent(value):
    """The extent's numbers in the order typed (core.extent.TypedExtent), or None when it was not
    typed as text."""
    return read_extent_text(value)


def _crs_kind(crs: QgsCoordinateReferenceSystem) -> tuple[bool, bool]:
    """(geographic, metres) of a CRS; an unknown CRS counts as metres."""
    from qgis.core import QgsUnitTypes

    geographic = crs.isValid() and crs.isGeographic()
    metres = not crs.isValid() or crs.mapUnits() == QgsUnitTypes.DistanceUnit.DistanceMeters
    return geographic, metres


def check_extent(alg, parameters, name: str, context, feedback=None, warn: bool = True) -> None:
    """Refuse an extent that cannot be what was meant, warn about one that probably is not
    (core.extent.check_typed_extent has the rules), and refuse one without area.

    ``warn`` False (checkParameterValues, where nobody reads the log yet): errors only; the run
    warns again when it starts.
    """
    value = parameters.get(name)
    typed = typed_extent(value)
    crs = alg.parameterAsExtentCrs(parameters, name, context)
    if typed is not None:
        geographic, metres = _crs_kind(crs)
        try:
            warning = check_typed_extent(typed, geographic, metres)
        except ExtentError as exc:
            raise QgsProcessingException(str(exc)) from exc
        if warning and warn:
            feedback = feedback if feedback is not None else context.feedback()
            if feedback is not None:
                feedback.pushWarning(warning)
    extent = alg.parameterAsExtent(parameters, name, context)
    if extent.isNull() or extent.width() <= 0 or extent.height() <= 0:
        raise QgsProcessingException(
            "The area of interest has no area (zero width or height): give an area, not a point or a line."
        )


def extent_hints(alg, parameters, name: str, context) -> str:
    """Other readings of the extent ``name`` (swapped latitude and longitude, bbox order), as
    sentences to add to a message saying no scene was found there; "" when it was no typed text."""
    typed = typed_extent(parameters.get(name))
    if typed is None:
        return ""
    geographic, _ = _crs_kind(alg.parameterAsExtentCrs(parameters, name, context))
    return " ".join(no_scene_hints(typed, geographic))


def area_geometry(geometry: QgsGeometry, crs: QgsCoordinateReferenceSystem, context):
    """(shapely geometry, EPSG code) of a QGIS geometry; non-EPSG CRSs go through EPSG:4326."""
    from shapely import wkt

    if geometry is None or geometry.isEmpty():
        raise QgsProcessingException("The area of interest is empty.")
    if geometry.area() <= 0:
        raise QgsProcessingException(
            "The area of interest has no area (zero width or height, or polygons without area): give an area, "
            "not a point or a line."
        )
    authid = crs.authid()
    if authid.upper().startswith("EPSG:"):
        return wkt.loads(geometry.asWkt()), int(authid.split(":")[1])
    wgs84 = QgsCoordinateReferenceSystem("EPSG:4326")
    g = QgsGeometry(geometry)
    g = g.densifyByCount(16)
    g.transform(QgsCoordinateTransform(crs, wgs84, context.transformContext()))
    return wkt.loads(g.asWkt()), 4326


def area_from_parameters(alg, parameters, context, extent_name: str, layer_name: str | None, warn: bool = True):
    """The area: the (selected) polygons of ``layer_name`` if given, else the extent ``extent_name``."""
    if layer_name and parameters.get(layer_name):
        source = alg.parameterAsSource(parameters, layer_name, context)
        if source is None:
            raise QgsProcessingException(alg.invalidSourceError(parameters, layer_name))
        geoms = [f.geometry() for f in source.getFeatures() if f.hasGeometry() and not f.geometry().isEmpty()]
        if not geoms:
            raise QgsProcessingException("The area layer has no polygons.")
        union = QgsGeometry.unaryUnion(geoms)
        if union.isNull() or union.isEmpty():
            raise QgsProcessingException("The area layer's polygons could not be combined (invalid geometries?).")
        return area_geometry(union.makeValid() if not union.isGeosValid() else union, source.sourceCrs(), context)
    if not parameters.get(extent_name):
        raise QgsProcessingException("Give an area of interest (an extent or a polygon layer).")
    check_extent(alg, parameters, extent_name, context, warn=warn)
    crs = alg.parameterAsExtentCrs(parameters, extent_name, context)
    return area_geometry(extent_geometry(alg, parameters, extent_name, context, crs), crs, context)


def extent_geometry(alg, parameters, name: str, context, crs) -> QgsGeometry:
    """Extent ``name`` as a polygon in ``crs``, its own CRS (``parameterAsExtentCrs``).

    Not ``parameterAsExtentGeometry``: on QGIS 3.40 (not 3.22) it also tries an extent typed as
    text (``xmin,xmax,ymin,ymax [EPSG:…]``) as a layer's source, which GDAL fails to open ('ERROR:
    Status 2: File … could not be found' on stderr, and a GDAL warning 'Invalid range specified'
    that pyogrio, once loaded, turns into a Python RuntimeWarning on this line). In the extent's
    own CRS both give the same rectangle, for text, layers and rectangles alike."""
    return QgsGeometry.fromRect(alg.parameterAsExtent(parameters, name, context, crs))


def output_path(alg, parameters, name: str, context, extension: str) -> str:
    """The destination of output ``name``; a temporary file when none was given (a model
    output left unset reaches the child algorithm as an empty destination)."""
    from qgis.core import QgsProcessingUtils

    path = alg.parameterAsOutputLayer(parameters, name, context)
    return path or QgsProcessingUtils.generateTempFilename(f"{name.lower()}.{extension}")


def grid_from_parameters(alg, parameters, context, aoi: str, target_crs: str, resolution: str, grid_like: str | None = None,
                         warn: bool = True):
    """The output grid: a raster's own grid (``grid_like``), or the extent in the target CRS
    (default: the extent's CRS if projected, else the UTM zone of its centre) at the resolution,
    its edges on multiples of the resolution."""
    from ..core.frequency import grid_for_area, utm_epsg
    from ..core.reading import Grid

    like = alg.parameterAsRasterLayer(parameters, grid_like, context) if grid_like else None
    if like is not None:
        import rasterio

        with rasterio.open(like.source()) as ds:
            return Grid(ds.crs, ds.transform, (ds.height, ds.width))
    if not parameters.get(aoi):
        raise QgsProcessingException("Give the extent of the output grid (or a raster whose grid to use).")
    check_extent(alg, parameters, aoi, context, warn=warn)
    aoi_crs = alg.parameterAsExtentCrs(parameters, aoi, context)
    target = alg.parameterAsCrs(parameters, target_crs, context)
    if not target.isValid():
        if aoi_crs.isValid() and not aoi_crs.isGeographic():
            target = aoi_crs
        else:
            centre = alg.parameterAsExtent(parameters, aoi, context, QgsCoordinateReferenceSystem("EPSG:4326")).center()
            target = QgsCoordinateReferenceSystem(f"EPSG:{utm_epsg(centre.x(), centre.y())}")
    if target.isGeographic():
        raise QgsProcessingException("The target CRS must be projected (metres), e.g. EPSG:27700 or a UTM zone.")
    extent = alg.parameterAsExtent(parameters, aoi, context, target)
    size = alg.parameterAsDouble(parameters, resolution, context)
    crs_text = target.authid() if target.authid().upper().startswith("EPSG:") else target.toWkt()
    grid = grid_for_area((extent.xMinimum(), extent.yMinimum(), extent.xMaximum(), extent.yMaximum()), crs_text, size)
    if grid.shape[0] * grid.shape[1] > 4_000_000_000:
        raise QgsProcessingException(f"The grid would have {grid.shape[0]} × {grid.shape[1]} pixels; use a coarser resolution.")
    return grid


DASK_SCHEDULER = "DASK_SCHEDULER"


def add_scheduler_parameter(alg) -> None:
    """DASK_SCHEDULER: a dask.distributed scheduler address; empty runs in this process."""
    from qgis.core import QgsProcessingParameterDefinition

    param = with_help(QgsProcessingParameterString(
        DASK_SCHEDULER, alg.tr("Dask scheduler address"), "", optional=True),
        alg.tr("A dask.distributed scheduler, e.g. tcp://10.0.0.5:8786. Default: empty, run on this computer."))
    param.setFlags(param.flags() | QgsProcessingParameterDefinition.Flag.FlagAdvanced)
    alg.addParameter(param)


def scheduler_from_parameters(alg, parameters, context, feedback):
    """The executor the user asked for: None (in this process) or a connected Dask executor."""
    address = (alg.parameterAsString(parameters, DASK_SCHEDULER, context) or "").strip()
    if not address:
        return None
    from ..core.executor import executor_for

    try:
        executor = executor_for(address)
    except RuntimeError as exc:
        raise QgsProcessingException(str(exc)) from exc
    feedback.pushInfo(f"Running on the Dask scheduler {address}: {executor.workers} worker threads.")
    return executor
