"""``cloudprob:screenscenes`` — Cloud cover inside the area (adapter over core.screening)."""
from __future__ import annotations

from qgis.core import (
    QgsFeatureSink,
    QgsField,
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
from ..core.screening import passes, screen_scenes
from .common import add_mask_parameters, area_from_parameters, mask_spec, scenes_from_source
from .compat import field_type
from .feedback import FeedbackProgress, core_logging_to
from .search_scenes import WGS84, scene_feature, scene_fields
from .styling import StylePostProcessor

AOI_FIELDS = [
    ("aoi_cloud_pct", field_type("double")),
    ("aoi_shadow_pct", field_type("double")),
    ("aoi_snow_pct", field_type("double")),
    ("aoi_valid_pct", field_type("double")),
    ("aoi_status", field_type("string")),
    ("aoi_rank", field_type("int")),
    ("n_products", field_type("int")),
    ("items", field_type("string")),
]


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
            "duplicates) are combined into one observation; items lists them. Acquisitions are filtered "
            "by the two thresholds and ranked clearest first. An acquisition that cannot be read is kept, "
            "marked in aoi_status and named in the log — never dropped or counted as clear.\n\n"
            "Resolution 20 m reads the SCL at full resolution; coarser values read the COG overviews "
            "(fewer bytes, coarser shares). Area: the polygons of the area layer if given (selected "
            "features only if so chosen), else the extent."
        )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.SCENES, self.tr("Scenes (from Search Sentinel-2 scenes)"),
            [QgsProcessing.SourceType.TypeVectorPolygon]))
        self.addParameter(QgsProcessingParameterExtent(self.AOI, self.tr("Area of interest (extent)"), optional=True))
        self.addParameter(with_help(QgsProcessingParameterFeatureSource(
            self.AOI_LAYER, self.tr("Area of interest (polygons)"), [QgsProcessing.SourceType.TypeVectorPolygon],
            optional=True), self.tr("Used instead of the extent when given.")))
        add_mask_parameters(self)
        self.addParameter(with_help(QgsProcessingParameterNumber(
            self.RESOLUTION, self.tr("Resolution (metres)"),
            QgsProcessingParameterNumber.Type.Double, 20.0, False, 10.0, 1000.0),
            self.tr("20 reads the SCL at full resolution; coarser values read the COG overviews.")))
        self.addParameter(QgsProcessingParameterNumber(
            self.MAX_AOI_CLOUD, self.tr("Maximum cloud inside the area (%)"),
            QgsProcessingParameterNumber.Type.Double, 100.0, False, 0.0, 100.0))
        self.addParameter(with_help(QgsProcessingParameterNumber(
            self.MIN_AOI_VALID, self.tr("Minimum valid data in the area (%)"),
            QgsProcessingParameterNumber.Type.Double, 0.0, False, 0.0, 100.0),
            self.tr("Share of the area's surface with valid data (SCL not no data or defective).")))
        self.addParameter(with_help(QgsProcessingParameterNumber(
            self.CONCURRENCY, self.tr("Scenes read at once"), QgsProcessingParameterNumber.Type.Integer, 32, False, 1,
            128), self.tr("Each scene waits on two round trips: more for a distant server.")))
        self.addParameter(QgsProcessingParameterFeatureSink(
            self.OUTPUT, self.tr("Scenes screened over the area"), QgsProcessing.SourceType.TypeVectorPolygon))

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

        fields = scene_fields()
        for name, kind in AOI_FIELDS:
            fields.append(QgsField(name, kind))
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
            feature = scene_feature(obs.scene, fields)
            geometry = QgsGeometry.unaryUnion([scene_feature(s, fields).geometry() for s in obs.scenes])
            geometry.convertToMultiType()
            feature.setGeometry(geometry)
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
            feature["n_products"] = len(obs.scenes)
            feature["items"] = ",".join(s.item_id for s in obs.scenes)
            if not sink.addFeature(feature, QgsFeatureSink.Flag.FastInsert):
                raise QgsProcessingException(f"Could not write {obs.datatake_id}: {sink.lastError()}")
            kept += 1
        feedback.pushInfo(
            f"{kept} acquisitions written; {dropped} above {max_cloud:g} % cloud or with less than {min_valid:g} % "
            f"valid data in the area dropped; {result.errors} unreadable (kept, marked). "
            f"Fetched {result.bytes_fetched / 1e6:.2f} MB over HTTP."
        )
        StylePostProcessor.attach(context, dest_id, "screened_scenes.qml", name="Scenes screened over the area")
        return {self.OUTPUT: dest_id}
