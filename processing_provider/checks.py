"""Checks run before any work (``checkParameterValues``): every output location, the small
areas, the dates. Each raises ``QgsProcessingException`` with one sentence a user understands;
the algorithms and the shipped model call them, so a mistake is said at the start, never after
an hour of reading scenes. What is decided lives in ``core`` (outputs, zonal); this module only
reads the parameters."""
from __future__ import annotations

from dataclasses import dataclass

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsFeatureRequest,
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingOutputLayerDefinition,
    QgsProcessingParameters,
    QgsProperty,
    QgsRectangle,
    QgsWkbTypes,
)

from ..core.outputs import OutputError, check_output_location
from ..core.zonal import not_polygons_message, zone_ids_problem

# destinations that are no file on this computer: QGIS makes them, or they live elsewhere
_NOT_FILES = ("memory:", "ogr:", "postgres:", "postgis:", "spatialite:", "mssql:", "oracle:", "hana:")


def destination_text(value, context) -> str:
    """The text of a destination parameter's value, without side effects: no temporary file is
    made and no layer is registered for loading (parameterAsOutputLayer does both)."""
    if isinstance(value, QgsProcessingOutputLayerDefinition):
        value = value.sink
    if isinstance(value, QgsProperty):
        value = value.valueAsString(context.expressionContext(), "")
    return "" if value is None else str(value).strip()


def destination_paths(alg, parameters, context) -> list[tuple[str, str]]:
    """(label, file path) of every destination of ``alg`` given as a file on this computer."""
    paths = []
    for definition in alg.destinationParameterDefinitions():
        text = destination_text(parameters.get(definition.name()), context)
        if not text or text == QgsProcessing.TEMPORARY_OUTPUT or text.lower().startswith(_NOT_FILES) or "://" in text:
            continue
        paths.append((definition.description(), text.split("|")[0]))
    return paths


def check_destinations(alg, parameters, context) -> None:
    """Every output given as a file can be written: its folder exists and is writable."""
    for label, path in destination_paths(alg, parameters, context):
        try:
            check_output_location(path, label)
        except OutputError as exc:
            raise QgsProcessingException(str(exc)) from exc


@dataclass
class Zones:
    """What the checks learned about the small areas: how many, where, in which CRS."""

    count: int
    extent: QgsRectangle
    crs: QgsCoordinateReferenceSystem


def check_zones(alg, parameters, context, zones: str = "ZONES", id_field: str = "ZONE_ID_FIELD") -> Zones:
    """The small areas: a layer that opens, has features, polygons, a CRS, and an id field whose
    values are unique and never NULL (core.zonal.zone_ids_problem says why that matters)."""
    source = alg.parameterAsSource(parameters, zones, context)
    if source is None:
        raise QgsProcessingException(alg.invalidSourceError(parameters, zones))
    name = alg.parameterAsString(parameters, id_field, context) or alg.parameterDefinition(id_field).defaultValue()
    fields = source.fields()
    if not name or fields.indexOf(name) < 0:
        offered = ", ".join(f.name() for f in fields)
        raise QgsProcessingException(f"The small areas have no field '{name}'; their fields: {offered}.")
    if QgsWkbTypes.geometryType(source.wkbType()) != QgsWkbTypes.GeometryType.PolygonGeometry:
        kind = QgsWkbTypes.displayString(QgsWkbTypes.flatType(QgsWkbTypes.singleType(source.wkbType())))
        raise QgsProcessingException(not_polygons_message({kind or "no"}))
    if not source.sourceCrs().isValid():
        raise QgsProcessingException("The small areas have no coordinate reference system: set the layer's CRS.")
    columns = {f.name(): [] for f in fields}
    request = QgsFeatureRequest().setFlags(QgsFeatureRequest.Flag.NoGeometry)
    for feature in source.getFeatures(request):
        for f in fields:
            columns[f.name()].append(plain(feature[f.name()]))
    if not columns[name]:
        raise QgsProcessingException("The small-area layer has no features.")
    problem = zone_ids_problem(columns, name)
    if problem:
        raise QgsProcessingException(problem)
    return Zones(len(columns[name]), source.sourceExtent(), source.sourceCrs())


def check_dates(alg, parameters, context, start: str = "START_DATE", end: str = "END_DATE"):
    """(start, end) as QDates, the end not before the start."""
    # QgsProcessingAlgorithm.parameterAsDate only exists from QGIS 3.28 on
    first = QgsProcessingParameters.parameterAsDate(alg.parameterDefinition(start), parameters, context)
    last = QgsProcessingParameters.parameterAsDate(alg.parameterDefinition(end), parameters, context)
    if not first.isValid() or not last.isValid():
        raise QgsProcessingException("Start and end dates are required (YYYY-MM-DD).")
    if last < first:
        raise QgsProcessingException(
            f"The end date {last.toString('yyyy-MM-dd')} is before the start date {first.toString('yyyy-MM-dd')}.")
    return first, last


def plain(value):
    """A QGIS attribute value as plain Python (NULL → None; dates and times as ISO text)."""
    if value is None:
        return None
    if hasattr(value, "isNull") and value.isNull():
        return None
    if hasattr(value, "toPyDateTime"):
        return value.toPyDateTime().isoformat()
    if hasattr(value, "toPyDate"):
        return value.toPyDate().isoformat()
    if hasattr(value, "toString") and not isinstance(value, (str, int, float, bool)):
        return value.toString()
    return value


def check_annual_model(model, parameters, context) -> None:
    """What cloudprob:annualcloudprobability's steps would each refuse, checked before the first
    of them: the catalogue's address, the period, the area, the target CRS and resolution, the
    small areas (polygons, unique ids, inside the area) and every output location. Without
    this, empty or point zones and a missing output folder failed after the search, the
    frequency and the smoothing had run (an hour of a national run)."""
    from ..core.search import SearchError, check_url
    from .common import check_extent

    check_destinations(model, parameters, context)
    try:
        check_url(model.parameterAsString(parameters, "STAC_URL", context))
    except SearchError as exc:
        raise QgsProcessingException(str(exc)) from exc
    first, last = check_dates(model, parameters, context)
    if model.parameterAsEnum(parameters, "VARIANT", context) == 1 and first.year() != last.year():
        raise QgsProcessingException(
            f"The published variant (VARIANT=1) counts one calendar year, as the 2024 release's code does: "
            f"{first.toString('yyyy-MM-dd')} … {last.toString('yyyy-MM-dd')} spans {last.year() - first.year() + 1} "
            "years. Run one year at a time.")
    if not parameters.get("AOI"):
        raise QgsProcessingException("Give an area of interest (AOI).")
    check_extent(model, parameters, "AOI", context, warn=False)
    target = model.parameterAsCrs(parameters, "TARGET_CRS", context)
    if target.isValid() and target.isGeographic():
        raise QgsProcessingException("The target CRS must be projected (metres), e.g. EPSG:27700 or a UTM zone.")
    check_cost(model, parameters, context, annual_model_cost(model, parameters, context))
    zones = check_zones(model, parameters, context)
    aoi_crs = model.parameterAsExtentCrs(parameters, "AOI", context)
    area = model.parameterAsExtent(parameters, "AOI", context, zones.crs)
    if not area.intersects(zones.extent):
        raise QgsProcessingException(
            f"None of the {zones.count} small areas lies in the area of interest: the areas span "
            f"{_box(zones.extent)} and the area of interest {_box(area)}, in {zones.crs.authid() or 'the areas’ CRS'} "
            f"(the area of interest was given in {aoi_crs.authid() or 'another CRS'}). Check both, and their CRSs.")


def _box(rect: QgsRectangle) -> str:
    return f"({rect.xMinimum():.6g}, {rect.yMinimum():.6g}, {rect.xMaximum():.6g}, {rect.yMaximum():.6g})"


def destination_file(alg, parameters, name: str, context, extension: str) -> str:
    """Where output ``name`` will be written: its file, or a file in QGIS's temporary folder
    when it is temporary or unnamed (the disk that then holds it). No file is made."""
    import os

    from qgis.core import QgsProcessingUtils

    text = destination_text(parameters.get(name), context)
    definition = alg.parameterDefinition(name)
    if not text and definition is not None and definition.defaultValue():
        text = destination_text(definition.defaultValue(), context)
    if not text or text == QgsProcessing.TEMPORARY_OUTPUT or text.lower().startswith(_NOT_FILES) or "://" in text:
        return os.path.join(QgsProcessingUtils.tempFolder(), f"{name.replace(':', '_').lower()}.{extension}")
    return text.split("|")[0]


def scene_footprints(source, context) -> tuple[list, int]:
    """(one footprint per acquisition in longitude/latitude, shapely, None where unknown; the
    months the scenes span) of a scenes layer, from its geometries and datatake_id field: no
    STAC item is parsed."""
    from qgis.core import QgsCoordinateTransform
    from shapely import wkb

    from ..core.costs import acquisition_footprints

    wgs84 = QgsCoordinateReferenceSystem("EPSG:4326")
    transform = QgsCoordinateTransform(source.sourceCrs(), wgs84, context.transformContext()) \
        if source.sourceCrs().isValid() and source.sourceCrs() != wgs84 else None
    names = source.fields().names()
    products: dict = {}
    months = set()
    for feature in source.getFeatures():
        key = feature["datatake_id"] if "datatake_id" in names else None
        key = str(key) if plain(key) is not None else f"feature {feature.id()}"
        geometry = feature.geometry()
        shape = None
        if geometry is not None and not geometry.isEmpty():
            if transform is not None:
                geometry.transform(transform)
            shape = wkb.loads(bytes(geometry.asWkb()))
        products.setdefault(key, []).append(shape)
        when = plain(feature["datetime"]) if "datetime" in names else None
        if when:
            months.add(str(when)[:7])
    return acquisition_footprints(products), max(1, len(months))


def check_cost(alg, parameters, context, cost, feedback=None) -> None:
    """Refuse a run whose outputs cannot fit on their disks (core.costs.disk_problems); with a
    feedback, say what the run will cost and warn where the disk is tight."""
    from ..core.costs import describe, disk_problems
    from ..core.outputs import disk_of, free_bytes

    free = {}
    for place in cost.least:
        free.setdefault(disk_of(place), free_bytes(place))
    errors, warnings = disk_problems(cost, free, disk_of)
    if errors:
        raise QgsProcessingException(f"{errors[0]} {describe(cost)}")
    if feedback is not None:
        feedback.pushInfo(describe(cost))
        for warning in warnings:
            feedback.pushWarning(warning)


def annual_model_cost(model, parameters, context):
    """What cloudprob:annualcloudprobability's frequency and smoothing steps will cost
    (core.costs), before the search: every place is taken to be seen ACQUISITIONS_PER_YEAR times
    a year."""
    from ..core.costs import assumed_work, frequency_cost
    from ..core.frequency import default_cache_dir, grid_for_area

    target = model.parameterAsCrs(parameters, "TARGET_CRS", context)
    if not target.isValid():
        target = QgsCoordinateReferenceSystem("EPSG:27700")
    extent = model.parameterAsExtent(parameters, "AOI", context, target)
    size = model.parameterAsDouble(parameters, "RESOLUTION", context)
    crs_text = target.authid() if target.authid().upper().startswith("EPSG:") else target.toWkt()
    grid = grid_for_area((extent.xMinimum(), extent.yMinimum(), extent.xMaximum(), extent.yMaximum()), crs_text, size)
    if grid.shape[0] * grid.shape[1] > 4_000_000_000:
        raise QgsProcessingException(
            f"The grid would have {grid.shape[0]} × {grid.shape[1]} pixels; use a coarser resolution.")
    first, last = check_dates(model, parameters, context)
    variant = model.parameterAsEnum(parameters, "VARIANT", context)
    mean = variant == 1 or model.parameterAsEnum(parameters, "MEASURE", context) == 1
    rasters = {key: destination_file(model, parameters, f"frequency:{name}", context, "tif") for key, name in (
        ("probability", "PROBABILITY"), ("valid", "VALID"), ("cloudy", "CLOUDY"), ("stdev", "SPREAD"))}
    smoothing = {name: destination_file(model, parameters, f"smoothing:{name}", context, "tif")
                 for name in ("SMOOTHED", "ADJUSTED") + (("ADJUSTED_COUNT",) if variant == 1 else ())}
    return frequency_cost(grid.shape, 1, assumed_work(grid.shape, first.daysTo(last) + 1),
                          "mean_probability" if mean else "frequency", size, rasters, str(default_cache_dir()),
                          smoothing)
