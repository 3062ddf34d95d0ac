"""``cloudprob:smoothprobability`` — acquisition-weighted smoothing and regression adjustment."""
from __future__ import annotations

from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
)

from .base import CloudProbAlgorithm
from ..core.progress import Cancelled
from ..core.smoothing import smooth_probability
from .common import output_path
from .feedback import FeedbackProgress, core_logging_to
from .styling import StylePostProcessor

SHAPES = ["box", "gaussian"]


class SmoothProbabilityAlgorithm(CloudProbAlgorithm):
    """smoothed = K∗cloudy / K∗valid; adjusted = smoothed − explained part of the artefacts."""

    NAME = "smoothprobability"
    DISPLAY_NAME = "Smooth and adjust the cloud probability"
    GROUP = "Cloud probability"
    GROUP_ID = "probability"

    CLOUDY = "CLOUDY"
    VALID = "VALID"
    KERNEL_SIZE = "KERNEL_SIZE"
    KERNEL_SHAPE = "KERNEL_SHAPE"
    COVARIATES = "COVARIATES"
    ADJUST = "ADJUST"
    OUTPUT_SMOOTHED = "OUTPUT_SMOOTHED"
    OUTPUT_ADJUSTED = "OUTPUT_ADJUSTED"

    def shortHelpString(self) -> str:  # noqa: N802
        return self.tr(
            "Acquisition-weighted smoothing of the counts from 'Per-pixel cloud probability': smoothed = "
            "K∗cloudy / K∗valid in percent, with a box or Gaussian kernel of the given size (pixels, odd). "
            "Pixels with more acquisitions weigh more and pixels without data weigh nothing; beyond the "
            "raster's edge is no data, never mirrored. The time per pixel does not depend on the kernel size.\n\n"
            "Adjustment: ordinary least squares of the smoothed probability on the smoothed valid count (which "
            "carries the orbit-overlap pattern) and the optional covariate rasters (e.g. an urban fraction, on "
            "the same grid); the explained part is removed while the mean is kept, clipped to 0–100 %. "
            "Coefficients, R² and the pixel count are written to the log and to a .regression.json file beside "
            "the adjusted raster."
        )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer(self.CLOUDY, self.tr("Cloudy observations")))
        self.addParameter(QgsProcessingParameterRasterLayer(self.VALID, self.tr("Valid observations")))
        self.addParameter(QgsProcessingParameterNumber(
            self.KERNEL_SIZE, self.tr("Kernel size (pixels, odd)"), QgsProcessingParameterNumber.Integer, 21, False, 1, 1001))
        self.addParameter(QgsProcessingParameterEnum(
            self.KERNEL_SHAPE, self.tr("Kernel shape"), options=[self.tr("Box"), self.tr("Gaussian")], defaultValue=0))
        self.addParameter(QgsProcessingParameterMultipleLayers(
            self.COVARIATES, self.tr("Covariate rasters (same grid; optional)"), QgsProcessing.TypeRaster, optional=True))
        self.addParameter(QgsProcessingParameterBoolean(self.ADJUST, self.tr("Adjust with regression residuals"), True))
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT_SMOOTHED, self.tr("Smoothed probability (%)")))
        self.addParameter(QgsProcessingParameterRasterDestination(
            self.OUTPUT_ADJUSTED, self.tr("Adjusted probability (%)"), optional=True))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        cloudy = self.parameterAsRasterLayer(parameters, self.CLOUDY, context)
        valid = self.parameterAsRasterLayer(parameters, self.VALID, context)
        if cloudy is None or valid is None:
            raise QgsProcessingException(self.tr("Both count rasters are needed (from 'Per-pixel cloud probability')."))
        size = self.parameterAsInt(parameters, self.KERNEL_SIZE, context)
        if size % 2 == 0:
            raise QgsProcessingException(self.tr("The kernel size must be odd (e.g. 21)."))
        adjust = self.parameterAsBool(parameters, self.ADJUST, context)
        covariates = [layer.source() for layer in self.parameterAsLayerList(parameters, self.COVARIATES, context)]
        out_smoothed = output_path(self, parameters, self.OUTPUT_SMOOTHED, context, "tif")
        out_adjusted = output_path(self, parameters, self.OUTPUT_ADJUSTED, context, "tif") if adjust else None
        try:
            with core_logging_to(feedback):
                result = smooth_probability(
                    cloudy.source(), valid.source(), out_smoothed, out_adjusted, size=size,
                    shape=SHAPES[self.parameterAsEnum(parameters, self.KERNEL_SHAPE, context)],
                    covariates=covariates, adjust=adjust, progress=FeedbackProgress(feedback),
                )
        except Cancelled:
            feedback.pushWarning(self.tr("Cancelled; nothing was written."))
            return {}
        except ValueError as exc:
            raise QgsProcessingException(str(exc)) from exc
        outputs = {self.OUTPUT_SMOOTHED: out_smoothed}
        StylePostProcessor.attach(context, out_smoothed, "cloud_probability.qml", name="Smoothed cloud probability (%)")
        if result is not None:
            terms = ", ".join(f"{n} {c:+.4g}" for n, c in zip(result.names, result.coefficients))
            feedback.pushInfo(
                f"Adjustment: probability = {result.intercept:.3f} + {terms} (percent per unit); R² {result.r2:.3f} "
                f"over {result.pixels} pixels; mean {result.mean_before:.2f} % kept ({result.mean_after:.2f} % after "
                f"clipping to 0–100)."
            )
            outputs[self.OUTPUT_ADJUSTED] = out_adjusted
            StylePostProcessor.attach(context, out_adjusted, "cloud_probability.qml", name="Adjusted cloud probability (%)")
        return outputs
