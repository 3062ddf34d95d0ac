"""``cloudprob:clearcomposite`` — median composite of clear observations (adapter over core.composite)."""
from __future__ import annotations

from qgis.core import (
    QgsProcessingException,
    QgsProcessingParameterCrs,
    QgsProcessingParameterExtent,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterString,
)

from .base import CloudProbAlgorithm, with_help
from ..core.composite import CompositeError, clear_composite
from ..core.progress import Cancelled
from .common import (
    add_mask_parameters, add_scenes_parameter, check_scenes_layer, grid_from_parameters, mask_spec, output_path,
    scenes_from_source,
)
from .feedback import FeedbackProgress, core_logging_to
from .styling import RgbStretchPostProcessor
from .signals import stops_on_signals


class ClearCompositeAlgorithm(CloudProbAlgorithm):
    """Per-pixel median of the clear observations of chosen bands."""

    NAME = "clearcomposite"
    DISPLAY_NAME = "Clear-sky composite"
    GROUP = "Scenes"
    GROUP_ID = "scenes"
    REQUIRES = ("urllib3", "rasterio", "shapely", "pyproj", "scipy")

    SCENES = "SCENES"
    AOI = "AOI"
    BANDS = "BANDS"
    RESOLUTION = "RESOLUTION"
    TARGET_CRS = "TARGET_CRS"
    OUTPUT = "OUTPUT"

    def shortHelpString(self) -> str:  # noqa: N802
        return self.tr(
            "Per pixel, the median of the clear observations (mask clear: not cloud, shadow, snow or no data) of "
            "the chosen bands (asset keys, default red, green, blue) over every acquisition of the scenes layer "
            "that has them, on one grid (extent, target CRS — default: the extent's if projected, else the UTM "
            "zone of its centre — and resolution, 10 m by default). Values are surface reflectance × 10000; the "
            "+1000 offset of processing baseline 04.00 and later is removed unless the catalogue says it was "
            "(earthsearch:boa_offset_applied). 0 = no clear observation. Loaded as an RGB layer stretched over "
            "0–0.25 reflectance."
        )

    def initAlgorithm(self, config=None):  # noqa: N802
        add_scenes_parameter(self)
        self.addParameter(with_help(QgsProcessingParameterExtent(self.AOI, self.tr("Extent of the composite")),
                                    self.tr("The area the composite covers, any CRS; no default.")))
        self.addParameter(with_help(QgsProcessingParameterString(
            self.BANDS, self.tr("Bands (asset keys)"), "red,green,blue"),
            self.tr("Comma separated STAC asset keys. Default: red,green,blue.")))
        add_mask_parameters(self, with_shadows=False)
        self.addParameter(with_help(QgsProcessingParameterNumber(
            self.RESOLUTION, self.tr("Resolution (metres)"), QgsProcessingParameterNumber.Type.Double, 10.0, False,
            1.0, 10000.0), self.tr("Pixel size of the composite in metres. Default: 10, the visible bands' own.")))
        self.addParameter(with_help(QgsProcessingParameterCrs(
            self.TARGET_CRS, self.tr("Target CRS"), optional=True),
            self.tr("A projected CRS (metres). Default: empty, the extent's CRS if projected, else the UTM zone of "
                    "its centre.")))
        self.addParameter(with_help(QgsProcessingParameterRasterDestination(self.OUTPUT, self.tr("Clear-sky composite")),
                                    self.tr("One band per asset: surface reflectance × 10000; 0 where no clear "
                                            "observation.")))

    def check_inputs(self, parameters, context) -> None:
        """The scenes layer, the bands, the grid and the mask, before any scene is read."""
        check_scenes_layer(self, parameters, self.SCENES, context)
        if not [b for b in self.parameterAsString(parameters, self.BANDS, context).split(",") if b.strip()]:
            raise QgsProcessingException(self.tr("Name at least one band (asset key)."))
        grid_from_parameters(self, parameters, context, self.AOI, self.TARGET_CRS, self.RESOLUTION, warn=False)
        mask_spec(self, parameters, context)

    @stops_on_signals
    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        source = self.parameterAsSource(parameters, self.SCENES, context)
        if source is None:
            raise QgsProcessingException(self.invalidSourceError(parameters, self.SCENES))
        scenes = [s for s, _ in scenes_from_source(source, feedback)]
        bands = tuple(b.strip() for b in self.parameterAsString(parameters, self.BANDS, context).split(",") if b.strip())
        if not bands:
            raise QgsProcessingException(self.tr("Name at least one band (asset key)."))
        grid = grid_from_parameters(self, parameters, context, self.AOI, self.TARGET_CRS, self.RESOLUTION)
        spec = mask_spec(self, parameters, context)
        out = output_path(self, parameters, self.OUTPUT, context, "tif")
        try:
            with core_logging_to(feedback):
                result = clear_composite(scenes, grid, spec, out, bands, progress=FeedbackProgress(feedback))
        except Cancelled:
            feedback.pushWarning(self.tr("Cancelled; nothing was written."))
            return {}
        except CompositeError as exc:
            raise QgsProcessingException(str(exc)) from exc
        feedback.pushInfo(
            f"Median of {result.clear_observations} clear observations from {result.acquisitions} acquisitions"
            + (f"; {result.skipped} acquisitions without {', '.join(bands)} skipped" if result.skipped else "") + "."
        )
        if len(bands) >= 3:
            RgbStretchPostProcessor.attach(context, out, name=self.tr("Clear-sky composite"))
        return {self.OUTPUT: out}
