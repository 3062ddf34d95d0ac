"""``cloudprob:cloudmask`` — One scene's cloud mask (adapter over core.screening/core.masks)."""
from __future__ import annotations

from qgis.core import (
    QgsProcessingException,
    QgsProcessingParameterExtent,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterString,
)

from .base import CloudProbAlgorithm, with_help
from ..core.masks import MASK_LEGEND, NODATA
from ..core.reading import gdal_http_env, write_raster
from ..core.screening import observe
from .common import (
    add_mask_parameters, add_scenes_parameter, area_geometry, check_extent, check_scenes_layer, extent_geometry,
    mask_spec, scenes_from_source,
)
from .styling import StylePostProcessor
from .signals import stops_on_signals


class CloudMaskAlgorithm(CloudProbAlgorithm):
    """0 clear, 1 cloud, 2 cloud shadow, 3 snow/ice, 255 no data, for one scene."""

    NAME = "cloudmask"
    DISPLAY_NAME = "Cloud mask of one scene"
    GROUP = "Scenes"
    GROUP_ID = "scenes"
    REQUIRES = ("urllib3", "rasterio", "shapely", "pyproj", "scipy")

    SCENES = "SCENES"
    SCENE_ID = "SCENE_ID"
    AOI = "AOI"
    RESOLUTION = "RESOLUTION"
    OUTPUT = "OUTPUT"

    def shortHelpString(self) -> str:  # noqa: N802
        return self.tr(
            "Writes the cloud mask of one scene: 0 clear, 1 cloud, 2 cloud shadow, 3 snow/ice, 255 no data, "
            "on the scene's own grid (UTM), over the area if one is given, else over the whole scene.\n\n"
            "The scene is the one named by Scene id in the scenes layer, else the first selected feature, "
            "else the first feature. Mask sources: the scene classification layer (SCL; cloud classes are a "
            "parameter, default 8, 9, 10), a score raster under a STAC asset (Cloud Score+ cs_cdf: cloud "
            "where below the threshold, default 0.60; Sentinel Hub CLP 0–255 or an s2cloudless probability: "
            "cloud where at or above the threshold, default 0.4), or the s2cloudless model run on the L1C "
            "bands (optional package s2cloudless). Grow clouds by: dilates cloud pixels by that many metres."
        )

    def initAlgorithm(self, config=None):  # noqa: N802
        add_scenes_parameter(self)
        self.addParameter(with_help(QgsProcessingParameterString(
            self.SCENE_ID, self.tr("Scene id"), "", optional=True),
            self.tr("The item id of the scene. Default: empty, the first selected feature, else the first scene.")))
        add_mask_parameters(self, with_shadows=False)
        self.addParameter(with_help(QgsProcessingParameterExtent(
            self.AOI, self.tr("Area of interest"), optional=True),
            self.tr("The mask covers this area, any CRS. Default: empty, the whole scene.")))
        self.addParameter(with_help(QgsProcessingParameterNumber(
            self.RESOLUTION, self.tr("Resolution (metres)"), QgsProcessingParameterNumber.Type.Double, 20.0, False,
            10.0, 1000.0), self.tr("Pixel size of the mask in metres (10–1000). Default: 20, the SCL's own.")))
        self.addParameter(with_help(QgsProcessingParameterRasterDestination(self.OUTPUT, self.tr("Cloud mask")),
                                    self.tr("0 clear, 1 cloud, 2 cloud shadow, 3 snow/ice, 255 no data.")))

    def check_inputs(self, parameters, context) -> None:
        """The scenes layer, the area and the mask, before any scene is read."""
        check_scenes_layer(self, parameters, self.SCENES, context)
        if parameters.get(self.AOI):
            check_extent(self, parameters, self.AOI, context, warn=False)
        mask_spec(self, parameters, context)

    def _scene(self, parameters, context, feedback):
        layer = self.parameterAsVectorLayer(parameters, self.SCENES, context)
        source = self.parameterAsSource(parameters, self.SCENES, context)
        if source is None:
            raise QgsProcessingException(self.invalidSourceError(parameters, self.SCENES))
        wanted = (self.parameterAsString(parameters, self.SCENE_ID, context) or "").strip()
        selected = layer.selectedFeatureIds() if layer is not None and not wanted else None
        pairs = scenes_from_source(source, feedback, selected_ids=selected or None)
        if wanted:
            pairs = [p for p in pairs if p[0].item_id == wanted]
            if not pairs:
                raise QgsProcessingException(f"No scene with id '{wanted}' in the scenes layer.")
        if not pairs:
            raise QgsProcessingException(self.tr("The scenes layer holds no scenes."))
        return pairs[0]

    @stops_on_signals
    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        scene, feature = self._scene(parameters, context, feedback)
        spec = mask_spec(self, parameters, context)
        if parameters.get(self.AOI):
            crs = self.parameterAsExtentCrs(parameters, self.AOI, context)
            area, epsg = area_geometry(extent_geometry(self, parameters, self.AOI, context, crs), crs, context)
        else:
            from shapely.geometry import shape

            if not scene.geometry:
                raise QgsProcessingException(f"Scene {scene.item_id} has no footprint; give an area of interest.")
            area, epsg = shape(scene.geometry), 4326
        feedback.pushInfo(f"Cloud mask of {scene.item_id} from '{spec.source}'.")
        feedback.setProgress(5)
        with gdal_http_env():
            obs = observe([scene], spec, area, epsg, self.parameterAsDouble(parameters, self.RESOLUTION, context), keep_mask=True)
        if obs.error:
            raise QgsProcessingException(f"Could not make the mask of {scene.item_id}: {obs.error}")
        if obs.mask is None:
            raise QgsProcessingException(f"Scene {scene.item_id} has no data in the area.")
        if feedback.isCanceled():
            return {}
        feedback.setProgress(80)
        out = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        mask = obs.mask.copy()
        mask[~obs.inside] = NODATA
        write_raster(out, mask, obs.grid, NODATA, tags={
            "item_id": scene.item_id, "mask_source": spec.source,
            "legend": ", ".join(f"{k} {v}" for k, v in MASK_LEGEND.items()),
        })
        f = obs.fractions
        feedback.pushInfo(
            f"Inside the area: {f.cloud_pct if f.cloud_pct is not None else float('nan'):.2f} % cloud, "
            f"{f.valid_pct:.2f} % with valid data."
        )
        StylePostProcessor.attach(context, out, "cloud_mask.qml", name=f"Cloud mask {scene.item_id}")
        feedback.setProgress(100)
        return {self.OUTPUT: out}
