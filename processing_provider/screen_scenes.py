"""``cloudprob:screenscenes`` — Cloud cover inside the area (adapter over core.screening)."""
from __future__ import annotations

from qgis.PyQt.QtCore import QDateTime, Qt
from qgis.core import (
    QgsFeature,
    QgsFeatureSink,
    QgsField,
    QgsFields,
    QgsGeometry,
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterNumber,
    QgsWkbTypes,
)

from .base import CloudProbAlgorithm, with_help
from ..core.progress import Cancelled
from ..core.screening import ScreeningError, passes, screen_scenes
from .common import (
    add_mask_parameters, add_scenes_parameter, area_from_parameters, check_scenes_layer, mask_spec,
    scenes_from_source,
)
from .compat import field_type
from .feedback import FeedbackProgress, core_logging_to
from .search_scenes import WGS84, footprint_geometry
from .styling import StylePostProcessor
from .signals import stops_on_signals

# One row per acquisition (datatake): every field describes all of its products together.
ACQUISITION_FIELDS = [
    ("datatake_id", field_type("string"), "Acquisition (datatake) id"),
    ("datetime", field_type("datetime"), "Acquired (UTC, the earliest product's time)"),
    ("platform", field_type("string"), "Platform"),
    ("relative_orbit", field_type("int"), "Relative orbit"),
    ("collection", field_type("string"), "STAC collection"),
    ("n_products", field_type("int"), "Products of the acquisition (count)"),
    ("item_ids", field_type("string"), "STAC item ids of all the acquisition's products (comma-separated)"),
    ("mgrs_tiles", field_type("string"), "MGRS tiles of the acquisition (comma-separated)"),
    ("epsg_codes", field_type("string"), "EPSG codes of the products' grids (comma-separated)"),
    ("processing_baselines", field_type("string"), "Processing baselines (comma-separated)"),
    ("scene_cloud", field_type("double"),
     "Scene cloud cover, eo:cloud_cover of the products weighted by their area with data (% of the acquisition's "
     "pixels with data, not of your area)"),
    ("scene_cloud_min", field_type("double"), "Scene cloud cover, lowest product (%)"),
    ("scene_cloud_max", field_type("double"), "Scene cloud cover, highest product (%)"),
    ("nodata_pct", field_type("double"), "No valid data in the area from any of the products (% of the area)"),
    ("aoi_cloud_pct", field_type("double"), "Cloud in the area (% of the area's pixels with valid data)"),
    ("aoi_shadow_pct", field_type("double"), "Cloud shadow in the area (% of the area's pixels with valid data)"),
    ("aoi_snow_pct", field_type("double"), "Snow and ice in the area (% of the area's pixels with valid data)"),
    ("aoi_valid_pct", field_type("double"), "Valid data in the area (% of the area)"),
    ("aoi_status", field_type("string"), "Screening status"),
    ("aoi_rank", field_type("int"), "Rank, clearest in the area first"),
    ("stac_items", field_type("string"), "STAC items of all the products (JSON array)"),
]
FIELD_ALIASES = {name: alias for name, _, alias in ACQUISITION_FIELDS}


def acquisition_fields() -> QgsFields:
    """Fields of the screened layer, their units in the aliases."""
    fields = QgsFields()
    for name, kind, alias in ACQUISITION_FIELDS:
        field = QgsField(name, kind)
        field.setAlias(alias)
        fields.append(field)
    return fields


def acquisition_feature(obs, fields: QgsFields) -> QgsFeature:
    """One acquisition's row: its products named, product-level figures over all of them, the
    area's figures from all its products' pixels together, and the union of their footprints."""
    summary = obs.summary()
    first = summary.products[0]
    feature = QgsFeature(fields)
    geometry = QgsGeometry.unaryUnion([footprint_geometry(s) for s in summary.products])
    geometry.convertToMultiType()
    feature.setGeometry(geometry)
    when = QDateTime.fromString(summary.datetime.replace("Z", ""), Qt.DateFormat.ISODateWithMs)
    when.setTimeSpec(Qt.TimeSpec.UTC)
    values = {
        "datatake_id": summary.datatake_id, "datetime": when, "platform": first.platform,
        "relative_orbit": first.relative_orbit, "collection": first.collection, "n_products": len(summary.products),
        "item_ids": ",".join(summary.item_ids), "mgrs_tiles": ",".join(summary.mgrs_tiles),
        "epsg_codes": ",".join(str(c) for c in summary.epsg_codes),
        "processing_baselines": ",".join(summary.processing_baselines), "scene_cloud": summary.scene_cloud_pct,
        "scene_cloud_min": summary.scene_cloud_min_pct, "scene_cloud_max": summary.scene_cloud_max_pct,
        "nodata_pct": obs.nodata_pct,
        "stac_items": "[" + ",".join(s.item_json() for s in summary.products) + "]",
    }
    for name, value in values.items():
        feature[name] = value
    return feature


class ScreenScenesAlgorithm(CloudProbAlgorithm):
    """Cloud / shadow / snow / valid share inside the area for every acquisition."""

    NAME = "screenscenes"
    DISPLAY_NAME = "Cloud cover inside the area"
    GROUP = "Scenes"
    GROUP_ID = "scenes"
    REQUIRES = ("urllib3", "rasterio", "shapely", "pyproj", "scipy")

    SCENES = "SCENES"
    AOI = "AOI"
    AOI_LAYER = "AOI_LAYER"
    RESOLUTION = "RESOLUTION"
    MAX_AOI_CLOUD = "MAX_AOI_CLOUD"
    MIN_AOI_VALID = "MIN_AOI_VALID"
    CONCURRENCY = "CONCURRENCY"
    OUTPUT = "OUTPUT"

    def shortHelpString(self) -> str:  # noqa: N802
        return self.tr(
            "For every acquisition in the scenes layer (from 'Search Sentinel-2 scenes'), reads only the "
            "window of the scene classification layer (or score raster) that covers the area, over HTTP, "
            "and reports inside the area: aoi_cloud_pct, aoi_shadow_pct and aoi_snow_pct (percent of the "
            "pixels with valid data) and aoi_valid_pct (percent of the area with valid data). This is the "
            "cloud cover of the area itself, which the scene-level eo:cloud_cover is not.\n\n"
            "Products of one acquisition (neighbouring MGRS tiles, split datastrips, reprocessed "
            "duplicates) are combined into one observation, one row per acquisition: item_ids and mgrs_tiles "
            "name all its products and tiles, stac_items holds their STAC items, the geometry is the union of "
            "their footprints. scene_cloud is the products' eo:cloud_cover weighted by each product's area with "
            "data (a reprocessed duplicate counted once), with the products' range in scene_cloud_min and "
            "scene_cloud_max; nodata_pct is the share of the area that none of the products covers with valid "
            "data. Later stages given this layer read all the products of each acquisition. Acquisitions are filtered "
            "by the two thresholds and ranked clearest first. An acquisition that cannot be read is kept, "
            "marked in aoi_status and named in the log — never dropped or counted as clear.\n\n"
            "Resolution 20 m reads the SCL at full resolution; coarser values read the COG overviews "
            "(fewer bytes, coarser shares). Area: the polygons of the area layer if given (selected "
            "features only if so chosen), else the extent."
        )

    def initAlgorithm(self, config=None):  # noqa: N802
        add_scenes_parameter(self)
        self.addParameter(with_help(QgsProcessingParameterExtent(
            self.AOI, self.tr("Area of interest (extent)"), optional=True),
            self.tr("The area whose cloud is measured, any CRS; xmin,xmax,ymin,ymax [CRS] as text. No default: give "
                    "this or the polygons.")))
        self.addParameter(with_help(QgsProcessingParameterFeatureSource(
            self.AOI_LAYER, self.tr("Area of interest (polygons)"), [QgsProcessing.SourceType.TypeVectorPolygon],
            optional=True), self.tr("Used instead of the extent when given (its selected features if so chosen). "
                                    "Default: none.")))
        add_mask_parameters(self)
        self.addParameter(with_help(QgsProcessingParameterNumber(
            self.RESOLUTION, self.tr("Resolution (metres)"),
            QgsProcessingParameterNumber.Type.Double, 20.0, False, 10.0, 1000.0),
            self.tr("Pixel size in metres (10–1000). Default: 20, the SCL at full resolution; coarser values read "
                    "the COG overviews.")))
        self.addParameter(with_help(QgsProcessingParameterNumber(
            self.MAX_AOI_CLOUD, self.tr("Maximum cloud inside the area (%)"),
            QgsProcessingParameterNumber.Type.Double, 100.0, False, 0.0, 100.0),
            self.tr("Acquisitions with more cloud than this in the area (percent of its pixels with valid data) are "
                    "dropped. Default: 100, none dropped.")))
        self.addParameter(with_help(QgsProcessingParameterNumber(
            self.MIN_AOI_VALID, self.tr("Minimum valid data in the area (%)"),
            QgsProcessingParameterNumber.Type.Double, 0.0, False, 0.0, 100.0),
            self.tr("Acquisitions with less of the area's surface than this with valid data (percent; SCL not no "
                    "data or defective) are dropped. Default: 0, none dropped.")))
        self.addParameter(with_help(QgsProcessingParameterNumber(
            self.CONCURRENCY, self.tr("Scenes read at once"), QgsProcessingParameterNumber.Type.Integer, 32, False, 1,
            128), self.tr("Scenes read at the same time (a count, 1–128). Default: 32; each scene waits on two round "
                 "trips: more for a distant server.")))
        self.addParameter(with_help(QgsProcessingParameterFeatureSink(
            self.OUTPUT, self.tr("Scenes screened over the area"), QgsProcessing.SourceType.TypeVectorPolygon),
            self.tr("One row per acquisition with the cloud, shadow, snow and valid data inside the area (percent), "
                    "ranked clearest first.")))

    def check_inputs(self, parameters, context) -> None:
        """The scenes layer, the area and the mask, before any scene is read."""
        check_scenes_layer(self, parameters, self.SCENES, context)
        area_from_parameters(self, parameters, context, self.AOI, self.AOI_LAYER, warn=False)
        mask_spec(self, parameters, context)

    @stops_on_signals
    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        source = self.parameterAsSource(parameters, self.SCENES, context)
        if source is None:
            raise QgsProcessingException(self.invalidSourceError(parameters, self.SCENES))
        pairs = scenes_from_source(source, feedback)
        if not pairs:
            raise QgsProcessingException(self.tr("The scenes layer holds no scenes."))
        area, epsg = area_from_parameters(self, parameters, context, self.AOI, self.AOI_LAYER)
        spec = mask_spec(self, parameters, context)
        max_cloud = self.parameterAsDouble(parameters, self.MAX_AOI_CLOUD, context)
        min_valid = self.parameterAsDouble(parameters, self.MIN_AOI_VALID, context)
        scenes = [s for s, _ in pairs]
        feedback.pushInfo(
            f"Screening {len(scenes)} scenes ({len({s.datatake_id for s in scenes})} acquisitions) over an area of "
            f"{area.area / 1e6:.3f} km² (EPSG:{epsg}) with mask source '{spec.source}'"
            + (f" asset '{spec.asset}' threshold {spec.threshold:g}" if spec.source == "score" else "") + "."
        )
        try:
            with core_logging_to(feedback):
                result = screen_scenes(
                    scenes, area, epsg, spec,
                    resolution=self.parameterAsDouble(parameters, self.RESOLUTION, context),
                    concurrency=self.parameterAsInt(parameters, self.CONCURRENCY, context),
                    progress=FeedbackProgress(feedback),
                )
        except Cancelled:
            feedback.pushWarning(self.tr("Screening cancelled; nothing was written."))
            return {}
        except ScreeningError as exc:
            raise QgsProcessingException(str(exc)) from exc

        fields = acquisition_fields()
        sink, dest_id = self.parameterAsSink(parameters, self.OUTPUT, context, fields, QgsWkbTypes.Type.MultiPolygon,
                                             WGS84)
        if sink is None:
            raise QgsProcessingException(self.invalidSinkError(parameters, self.OUTPUT))
        kept = dropped = 0
        rank = 0
        for obs in result.observations:
            f = obs.fractions
            if not passes(obs, max_cloud, min_valid):
                dropped += 1
                continue
            feature = acquisition_feature(obs, fields)
            if obs.error is None:
                rank += 1
                status = "ok" if f.valid_pct > 0 else "no data in the area"
                feature["aoi_cloud_pct"] = f.cloud_pct
                feature["aoi_shadow_pct"] = f.shadow_pct
                feature["aoi_snow_pct"] = f.snow_pct
                feature["aoi_valid_pct"] = f.valid_pct
                feature["aoi_rank"] = rank
            else:
                status = f"read error: {obs.error}"
            feature["aoi_status"] = status
            if not sink.addFeature(feature, QgsFeatureSink.Flag.FastInsert):
                raise QgsProcessingException(f"Could not write {obs.datatake_id}: {sink.lastError()}")
            kept += 1
        feedback.pushInfo(
            f"{kept} acquisitions written; {dropped} above {max_cloud:g} % cloud or with less than {min_valid:g} % "
            f"valid data in the area dropped; {result.errors} unreadable (kept, marked). "
            f"Fetched {result.bytes_fetched / 1e6:.2f} MB over HTTP."
        )
        StylePostProcessor.attach(context, dest_id, "screened_scenes.qml", FIELD_ALIASES,
                                  name="Scenes screened over the area")
        return {self.OUTPUT: dest_id}
