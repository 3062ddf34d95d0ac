"""``cloudprob:searchscenes`` — Search Sentinel-2 scenes (adapter over core.search)."""
from __future__ import annotations

import json
from datetime import date

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsFeature,
    QgsFeatureSink,
    QgsField,
    QgsFields,
    QgsGeometry,
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingParameterDateTime,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterNumber,
    QgsProcessingParameters,
    QgsProcessingParameterString,
    QgsWkbTypes,
)
from qgis.PyQt.QtCore import QDate, QDateTime, Qt

from .base import CloudProbAlgorithm, with_help
from ..core.progress import Cancelled
from ..core.search import (
    DEFAULT_COLLECTION, EARTH_SEARCH_V1, NoScenesError, SearchError, SearchRequest, check_url, search_scenes,
)
from ..core.stac import Scene
from .checks import check_dates
from .common import check_extent, extent_hints
from .compat import field_type
from .feedback import FeedbackProgress, core_logging_to
from .styling import StylePostProcessor
from .signals import stops_on_signals

WGS84 = QgsCoordinateReferenceSystem("EPSG:4326")


def scene_fields() -> QgsFields:
    """Fields of the scene footprints layer; later stages read ``stac_item`` back."""
    fields = QgsFields()
    for name, kind in (("item_id", "string"), ("collection", "string"), ("datetime", "datetime"),
                       ("platform", "string"), ("mgrs_tile", "string"), ("epsg", "int"), ("relative_orbit", "int"),
                       ("scene_cloud", "double"), ("nodata_pct", "double"), ("processing_baseline", "string"),
                       ("datatake_id", "string"), ("stac_item", "string")):
        fields.append(QgsField(name, field_type(kind)))
    return fields


def footprint_geometry(scene: Scene) -> QgsGeometry:
    """The item's GeoJSON footprint as a multipolygon in EPSG:4326 (empty if it has none)."""
    if not scene.geometry:
        return QgsGeometry()
    from osgeo import ogr

    ogr_geom = ogr.CreateGeometryFromJson(json.dumps(scene.geometry))
    if ogr_geom is None:
        return QgsGeometry()
    geom = QgsGeometry.fromWkt(ogr_geom.ExportToWkt())
    geom.convertToMultiType()
    return geom


def scene_feature(scene: Scene, fields: QgsFields) -> QgsFeature:
    """One feature of the footprints layer."""
    feature = QgsFeature(fields)
    feature.setGeometry(footprint_geometry(scene))
    when = QDateTime.fromString(scene.datetime.replace("Z", ""), Qt.DateFormat.ISODateWithMs)
    when.setTimeSpec(Qt.TimeSpec.UTC)
    values = {
        "item_id": scene.item_id,
        "collection": scene.collection,
        "datetime": when,
        "platform": scene.platform,
        "mgrs_tile": scene.mgrs_tile,
        "epsg": scene.epsg,
        "relative_orbit": scene.relative_orbit,
        "scene_cloud": scene.scene_cloud,
        "nodata_pct": scene.nodata_pct,
        "processing_baseline": scene.processing_baseline,
        "datatake_id": scene.datatake_id,
        "stac_item": scene.item_json(),
    }
    for name, value in values.items():
        feature.setAttribute(name, value)
    return feature


class SearchScenesAlgorithm(CloudProbAlgorithm):
    """STAC item search for an area and dates; one footprint feature per scene."""

    NAME = "searchscenes"
    DISPLAY_NAME = "Search Sentinel-2 scenes"
    GROUP = "Scenes"
    GROUP_ID = "scenes"
    REQUIRES = ("pystac_client", "shapely")

    STAC_URL = "STAC_URL"
    COLLECTION = "COLLECTION"
    AOI = "AOI"
    START_DATE = "START_DATE"
    END_DATE = "END_DATE"
    MAX_SCENE_CLOUD = "MAX_SCENE_CLOUD"
    MAX_ITEMS = "MAX_ITEMS"
    OUTPUT = "OUTPUT"

    def shortHelpString(self) -> str:  # noqa: N802
        return self.tr(
            "Searches a STAC API (Earth Search v1 by default) for Sentinel-2 scenes that touch the area "
            "in the period, and writes one footprint (EPSG:4326) per scene with its date, platform, MGRS tile, "
            "EPSG code, relative orbit, scene-level cloud cover (eo:cloud_cover, percent of the whole "
            "product, not of the area), no-data percent, processing baseline, datatake id (shared by every "
            "product of one acquisition) and the item's JSON, so later stages need no further STAC requests.\n\n"
            "A cloud limit is sent to the server only where the API declares the 'query' or 'filter' "
            "conformance class, and every item is checked again here: servers that ignore a filter do not "
            "produce a wrong list.\n\n"
            "Dates are UTC days, both included. Maximum scenes 0 = all."
        )

    def initAlgorithm(self, config=None):  # noqa: N802
        last_year = date.today().year - 1
        self.addParameter(with_help(
            QgsProcessingParameterString(self.STAC_URL, self.tr("STAC API URL"), EARTH_SEARCH_V1),
            self.tr("The STAC API to search, an https:// address. Default: Earth Search v1, {}.").format(EARTH_SEARCH_V1)))
        self.addParameter(with_help(
            QgsProcessingParameterString(self.COLLECTION, self.tr("Collection"), DEFAULT_COLLECTION),
            self.tr("The STAC collection of Sentinel-2 L2A scenes. Default: {} (Earth Search Collection 1; Planetary "
                    "Computer's is sentinel-2-l2a).").format(DEFAULT_COLLECTION)))
        self.addParameter(with_help(
            QgsProcessingParameterExtent(self.AOI, self.tr("Area of interest")),
            self.tr("Scenes that touch this area are found; any CRS, no default. Typed as text it is "
                    "xmin,xmax,ymin,ymax [CRS] (QGIS's order, not bbox order).")))
        self.addParameter(with_help(
            QgsProcessingParameterDateTime(
                self.START_DATE, self.tr("Start date (UTC, included)"), QgsProcessingParameterDateTime.Type.Date,
                QDate(last_year, 1, 1),
            ), self.tr("First day of the period, YYYY-MM-DD (UTC). Default: 1 January of last year.")))
        self.addParameter(with_help(
            QgsProcessingParameterDateTime(
                self.END_DATE, self.tr("End date (UTC, included)"), QgsProcessingParameterDateTime.Type.Date,
                QDate(last_year, 12, 31),
            ), self.tr("Last day of the period, YYYY-MM-DD (UTC). Default: 31 December of last year.")))
        self.addParameter(with_help(
            QgsProcessingParameterNumber(
                self.MAX_SCENE_CLOUD, self.tr("Maximum scene cloud cover (%)"),
                QgsProcessingParameterNumber.Type.Double, 100.0, False, 0.0, 100.0,
            ),
            self.tr("The catalogue's eo:cloud_cover: percent of the whole product (a 110 km tile), not of your area. "
                    "Default: 100, every scene."),
        ))
        self.addParameter(with_help(
            QgsProcessingParameterNumber(
                self.MAX_ITEMS, self.tr("Maximum number of scenes (0 = all)"),
                QgsProcessingParameterNumber.Type.Integer, 0, False, 0,
            ), self.tr("At most this many scenes (a count), the oldest first. Default: 0, all of them.")))
        self.addParameter(with_help(QgsProcessingParameterFeatureSink(
            self.OUTPUT, self.tr("Sentinel-2 scenes"), QgsProcessing.SourceType.TypeVectorPolygon),
            self.tr("One footprint per scene (EPSG:4326) with its date, tile, scene cloud cover (%) and STAC item.")))

    def check_inputs(self, parameters, context) -> None:
        """The STAC API URL, the dates and the area, before the run starts (the dialog shows the sentence)."""
        try:
            check_url(self.parameterAsString(parameters, self.STAC_URL, context))
        except SearchError as exc:
            raise QgsProcessingException(str(exc)) from exc
        check_dates(self, parameters, context, self.START_DATE, self.END_DATE)
        check_extent(self, parameters, self.AOI, context, warn=False)  # warned at the start of the run

    @stops_on_signals
    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        try:
            check_url(self.parameterAsString(parameters, self.STAC_URL, context))
        except SearchError as exc:
            raise QgsProcessingException(str(exc)) from exc
        # QgsProcessingAlgorithm.parameterAsDate only exists from QGIS 3.28 on
        start = QgsProcessingParameters.parameterAsDate(self.parameterDefinition(self.START_DATE), parameters, context)
        end = QgsProcessingParameters.parameterAsDate(self.parameterDefinition(self.END_DATE), parameters, context)
        if not start.isValid() or not end.isValid():
            raise QgsProcessingException(self.tr("Start and end dates are required (YYYY-MM-DD)."))
        check_extent(self, parameters, self.AOI, context, feedback)
        extent = self.parameterAsExtent(parameters, self.AOI, context, WGS84)
        if extent.isNull() or extent.width() <= 0 or extent.height() <= 0:
            raise QgsProcessingException(self.tr("The area of interest has no area in longitude/latitude."))
        request = SearchRequest(
            url=self.parameterAsString(parameters, self.STAC_URL, context).strip(),
            collection=self.parameterAsString(parameters, self.COLLECTION, context).strip(),
            bbox=(extent.xMinimum(), extent.yMinimum(), extent.xMaximum(), extent.yMaximum()),
            start=date(start.year(), start.month(), start.day()),
            end=date(end.year(), end.month(), end.day()),
            max_scene_cloud=self.parameterAsDouble(parameters, self.MAX_SCENE_CLOUD, context),
            max_items=self.parameterAsInt(parameters, self.MAX_ITEMS, context),
        )
        feedback.pushInfo(
            f"Searching {request.url} collection '{request.collection}' for {request.start} … {request.end}, "
            f"area {tuple(round(v, 5) for v in request.bbox)} (EPSG:4326)."
        )
        try:
            with core_logging_to(feedback):
                result = search_scenes(request, FeedbackProgress(feedback))
        except Cancelled:
            feedback.pushWarning(self.tr("Search cancelled; nothing was written."))
            return {}
        except NoScenesError as exc:  # often the area is not the one meant: say how else it reads
            hints = extent_hints(self, parameters, self.AOI, context)
            raise QgsProcessingException(f"{exc}{' ' + hints if hints else ''}") from exc
        except SearchError as exc:
            raise QgsProcessingException(str(exc)) from exc

        fields = scene_fields()
        sink, dest_id = self.parameterAsSink(
            parameters, self.OUTPUT, context, fields, QgsWkbTypes.Type.MultiPolygon, WGS84
        )
        if sink is None:
            raise QgsProcessingException(self.invalidSinkError(parameters, self.OUTPUT))
        for scene in result.scenes:
            if not sink.addFeature(scene_feature(scene, fields), QgsFeatureSink.Flag.FastInsert):
                raise QgsProcessingException(f"Could not write scene {scene.item_id}: {sink.lastError()}")
        datatakes = len({s.datatake_id for s in result.scenes})
        feedback.pushInfo(
            f"{len(result.scenes)} scenes from {datatakes} acquisitions (datatakes) written"
            + (f"; the server matched {result.matched}" if result.matched is not None else "")
            + "."
        )
        StylePostProcessor.attach(context, dest_id, "scene_footprints.qml", name="Sentinel-2 scenes")
        return {self.OUTPUT: dest_id}
