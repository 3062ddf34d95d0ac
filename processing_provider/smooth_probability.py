"""``cloudprob:smoothprobability`` — acquisition-weighted smoothing and regression adjustment."""
from __future__ import annotations

from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
)

from .base import CloudProbAlgorithm, with_help
from .checks import destination_text
from ..core.progress import Cancelled
from ..core.smoothing import (
    check_count_rasters, load_fit, published_adjustment, reference_adjustment, smooth_probability,
)
from .common import add_scheduler_parameter, output_path, scheduler_from_parameters
from .feedback import FeedbackProgress, core_logging_to
from .styling import StylePostProcessor
from .signals import stops_on_signals

SHAPES = ["box", "gaussian"]


class SmoothProbabilityAlgorithm(CloudProbAlgorithm):
    """smoothed = K∗cloudy / K∗valid; adjusted = smoothed − explained part of the artefacts."""

    NAME = "smoothprobability"
    DISPLAY_NAME = "Smooth and adjust the cloud probability"
    GROUP = "Cloud probability"
    GROUP_ID = "probability"
    REQUIRES = ("rasterio", "scipy")

    CLOUDY = "CLOUDY"
    VALID = "VALID"
    KERNEL_SIZE = "KERNEL_SIZE"
    KERNEL_SHAPE = "KERNEL_SHAPE"
    COVARIATES = "COVARIATES"
    ADJUST = "ADJUST"
    METHOD = "METHOD"
    DEVIATION_THRESHOLD = "DEVIATION_THRESHOLD"
    FIT_FROM = "FIT_FROM"
    OUTPUT_SMOOTHED = "OUTPUT_SMOOTHED"
    OUTPUT_ADJUSTED = "OUTPUT_ADJUSTED"
    OUTPUT_ADJUSTED_COUNT = "OUTPUT_ADJUSTED_COUNT"

    def shortHelpString(self) -> str:  # noqa: N802
        return self.tr(
            "Method 'Reference': the adjustment of the reference product (Cloud probability statistics per small "
            "area, 2024). With p = 100 × cloudy / valid and n = valid: the neighbourhood mean lag = K0∗(p·n) / "
            "K0∗n, K0 a kernel of ones of the given size whose centre is 0 (zeros beyond the edges); each pixel's "
            "deviation d = 100 × (p − lag) / lag (percent); m = the median deviation; d' = d where |d| is above the "
            "threshold (percent), else m; an ordinary least-squares fit p = a + b × d'; adjusted = p − b × (d' − m), "
            "the prediction at the median deviation plus the residual. Pixels within the threshold of their "
            "neighbourhood are unchanged; outliers (building edges, orbit seams) are pulled toward it. The "
            "smoothed output is lag. a, b, m, R² and the pixels shifted go to the log and to a .regression.json "
            "file beside the adjusted raster.\n\n"
            "Method 'As published (2024 release)': what the reference dataset's published code computes, exactly "
            "(docs/variants.md says how it differs). Its two-band raster (p, n) becomes one table of rows, one per "
            "band and pixel, x the row's value; the lag as above; d = 100 × (lag − x) / x (the code's join puts the "
            "pixel and the lag the other way round); m = the median of d over the rows of both bands; d' = d "
            "beyond the threshold, else m; least squares lag = a + b × d' over both bands' rows; result = lag − "
            "b × (d' − m). 'Adjusted probability' holds band 1's rows (the published probability_* columns), "
            "'Adjusted band 2' band 2's (the published acquisition_count_* columns: a surface near the lag, not a "
            "count). Pixels without observations, 0 % pixels and pixels without neighbours stop the published "
            "code; here they are no data, counted in the log and the .regression.json. Use counts made with one "
            "observation per product to reproduce the published table.\n\n"
            "Method 'Smoothed counts': acquisition-weighted smoothing of the counts from 'Per-pixel cloud probability': smoothed = "
            "K∗cloudy / K∗valid in percent, with a box or Gaussian kernel of the given size (pixels, odd). "
            "Pixels with more acquisitions weigh more and pixels without data weigh nothing; beyond the "
            "raster's edge is no data, never mirrored. The time per pixel does not depend on the kernel size.\n\n"
            "Adjustment: ordinary least squares of the smoothed probability on the smoothed valid count (which "
            "carries the orbit-overlap pattern) and the optional covariate rasters (e.g. an urban fraction, on "
            "the same grid); the explained part is removed while the mean is kept, clipped to 0–100 %. "
            "Coefficients, R² and the pixel count are written to the log and to a .regression.json file beside "
            "the adjusted raster.\n\n"
            "The extent matters. Both adjustments are fitted over the extent of the counts, i.e. the extent "
            "chosen for the run that made them (in the annual model, its area of interest): the same small areas "
            "run over another extent get another fit, and every adjusted value moves a little (in docs/headless.md's "
            "example, by up to several points). To compare runs, or to work a large area piece by piece, give "
            "FIT_FROM, the .regression.json of a previous run of the same method (same kernel size and threshold, "
            "same covariates): its fit is applied instead of fitting this extent, so runs agree exactly wherever a "
            "pixel's neighbourhood lies inside both. The JSON then names the fit it reused; R² is that fit's on "
            "these pixels."
        )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(with_help(QgsProcessingParameterRasterLayer(self.CLOUDY, self.tr("Cloudy observations")),
                                    self.tr("'Cloudy observations (count)' from 'Per-pixel cloud probability'; no "
                                            "default.")))
        self.addParameter(with_help(QgsProcessingParameterRasterLayer(self.VALID, self.tr("Valid observations")),
                                    self.tr("'Valid observations (count)' from 'Per-pixel cloud probability', on the "
                                            "same grid; no default.")))
        self.addParameter(with_help(QgsProcessingParameterEnum(
            self.METHOD, self.tr("Method"),
            options=[self.tr("Smoothed counts"), self.tr("Reference adjustment"),
                     self.tr("As published (2024 release)")], defaultValue=0),
            self.tr("Smoothed counts: smoothed cloudy / smoothed valid counts, regression on covariates. Reference "
                    "adjustment: each pixel's deviation from its acquisition-weighted neighbourhood (the reference "
                    "product's documented method). As published: the 2024 release's code, exactly (pooled over "
                    "the probability and count bands, pixel and lag swapped). Default: smoothed counts.")))
        self.addParameter(with_help(QgsProcessingParameterNumber(
            self.KERNEL_SIZE, self.tr("Kernel size (pixels, odd)"), QgsProcessingParameterNumber.Type.Integer, 21,
            False, 1, 1001), self.tr("Width of the neighbourhood in pixels, odd. Default: 21, the reference "
                                     "product's 21 × 21.")))
        self.addParameter(with_help(QgsProcessingParameterEnum(
            self.KERNEL_SHAPE, self.tr("Kernel shape"), options=[self.tr("Box"), self.tr("Gaussian")], defaultValue=0),
            self.tr("Weights of the smoothed counts' neighbourhood (the reference methods use the box). Default: box.")))
        self.addParameter(with_help(QgsProcessingParameterMultipleLayers(
            self.COVARIATES, self.tr("Covariate rasters"), QgsProcessing.SourceType.TypeRaster, optional=True),
            self.tr("On the grid of the counts, e.g. an urban fraction (smoothed counts method). Default: none.")))
        self.addParameter(with_help(QgsProcessingParameterNumber(
            self.DEVIATION_THRESHOLD, self.tr("Deviation threshold (%)"),
            QgsProcessingParameterNumber.Type.Double, 5.0, False, 0.0, 1000.0),
            self.tr("Reference adjustment: pixels within this many percent of their neighbourhood are unchanged. "
                    "Default: 5 %.")))
        self.addParameter(with_help(QgsProcessingParameterBoolean(
            self.ADJUST, self.tr("Adjust with regression residuals"), True),
            self.tr("Unticked, only the smoothed (or neighbourhood) probability is made. Default: ticked.")))
        self.addParameter(with_help(QgsProcessingParameterFile(
            self.FIT_FROM, self.tr("Reuse an earlier fit (JSON)"), extension="json", optional=True),
            self.tr("The .regression.json of an earlier run: its intercept, slope and median are used instead of a "
                    "fit over this run's extent, so overlapping runs agree. Default: empty, fit over this extent.")))
        add_scheduler_parameter(self)
        self.addParameter(with_help(QgsProcessingParameterRasterDestination(  # optional: see cloud_frequency.py
            self.OUTPUT_SMOOTHED, self.tr("Smoothed probability (%)"), optional=True),
            self.tr("The smoothed probability, or with the reference adjustment the neighbourhood's (lag); "
                    "percent.")))
        self.addParameter(with_help(QgsProcessingParameterRasterDestination(
            self.OUTPUT_ADJUSTED, self.tr("Adjusted probability (%)"), optional=True),
            self.tr("The adjusted cloud probability (percent); no data where there is no observation.")))
        self.addParameter(with_help(QgsProcessingParameterRasterDestination(
            self.OUTPUT_ADJUSTED_COUNT, self.tr("Adjusted band 2 (not a count)"), optional=True,
            createByDefault=False),
            self.tr("Method 'As published' only: the 2024 release's adjusted band-2 rows, which its table calls "
                    "acquisition_count_*. Give it to zonal statistics as VALID to reproduce that table.")))

    def check_inputs(self, parameters, context) -> None:
        """Both counts on one grid, the covariates on it too, an odd kernel and a readable fit to
        reuse, before any work."""
        cloudy = self.parameterAsRasterLayer(parameters, self.CLOUDY, context)
        valid = self.parameterAsRasterLayer(parameters, self.VALID, context)
        if cloudy is None or valid is None:
            raise QgsProcessingException(self.tr("Both count rasters are needed (from 'Per-pixel cloud probability')."))
        if self.parameterAsInt(parameters, self.KERNEL_SIZE, context) % 2 == 0:
            raise QgsProcessingException(self.tr("The kernel size must be odd (e.g. 21)."))
        covariates = [layer.source() for layer in self.parameterAsLayerList(parameters, self.COVARIATES, context)]
        method = self.parameterAsEnum(parameters, self.METHOD, context)
        fit_from = (self.parameterAsFile(parameters, self.FIT_FROM, context) or "").strip() or None
        try:
            check_count_rasters(cloudy.source(), valid.source(), covariates if method == 0 else ())
            if fit_from and self.parameterAsBool(parameters, self.ADJUST, context):
                load_fit(fit_from, ("counts", "reference", "published")[method])
        except ValueError as exc:
            raise QgsProcessingException(str(exc)) from exc

    @stops_on_signals
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
        executor = scheduler_from_parameters(self, parameters, context, feedback)
        fit_from = (self.parameterAsFile(parameters, self.FIT_FROM, context) or "").strip() or None
        if fit_from and not adjust:
            feedback.pushWarning(self.tr("No adjustment asked for: the fit to reuse is not used."))
        method = self.parameterAsEnum(parameters, self.METHOD, context)
        if method in (1, 2):
            out_count = None
            if method == 2 and adjust:
                out_count = output_path(self, parameters, self.OUTPUT_ADJUSTED_COUNT, context, "tif")
            elif destination_text(parameters.get(self.OUTPUT_ADJUSTED_COUNT), context) not in ("", "TEMPORARY_OUTPUT"):
                # named by the user, not a model's temporary file (the model passes one on every run)
                feedback.pushWarning(self.tr("'Adjusted band 2' is made only by the method 'As published'."))
            return self._reference(parameters, context, feedback, cloudy.source(), valid.source(), size, out_smoothed,
                                   out_adjusted, executor, fit_from, out_count if method == 2 else False)
        try:
            with core_logging_to(feedback):
                result = smooth_probability(
                    cloudy.source(), valid.source(), out_smoothed, out_adjusted, size=size,
                    shape=SHAPES[self.parameterAsEnum(parameters, self.KERNEL_SHAPE, context)],
                    covariates=covariates, adjust=adjust, progress=FeedbackProgress(feedback), scheduler=executor,
                    fit_from=fit_from,
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
            feedback.pushInfo(_fit_origin(result.fit_from))
            feedback.pushInfo(
                f"Adjustment: probability = {result.intercept:.3f} + {terms} (percent per unit); R² {result.r2:.3f} "
                f"over {result.pixels} pixels; mean {result.mean_before:.2f} % kept ({result.mean_after:.2f} % after "
                f"clipping to 0–100)."
            )
            outputs[self.OUTPUT_ADJUSTED] = out_adjusted
            StylePostProcessor.attach(context, out_adjusted, "cloud_probability.qml", name="Adjusted cloud probability (%)")
        return outputs

    def _reference(self, parameters, context, feedback, cloudy, valid, size, out_smoothed, out_adjusted, executor,
                   fit_from=None, out_count=False):
        """The documented reference adjustment, or with ``out_count`` not False the published one."""
        published = out_count is not False
        threshold = self.parameterAsDouble(parameters, self.DEVIATION_THRESHOLD, context)
        if self.parameterAsEnum(parameters, self.KERNEL_SHAPE, context) != 0 or \
                self.parameterAsLayerList(parameters, self.COVARIATES, context):
            feedback.pushWarning(self.tr("The reference methods use a box kernel and no covariates; "
                                         "the kernel shape and covariates are ignored."))
        common = dict(size=size, threshold_pct=threshold, progress=FeedbackProgress(feedback), scheduler=executor,
                      fit_from=fit_from if out_adjusted else None)
        try:
            with core_logging_to(feedback):
                if published:
                    result = published_adjustment(cloudy, valid, out_smoothed, out_adjusted, out_count, **common)
                else:
                    result = reference_adjustment(cloudy, valid, out_smoothed, out_adjusted, **common)
        except Cancelled:
            feedback.pushWarning(self.tr("Cancelled; nothing was written."))
            return {}
        except ValueError as exc:
            raise QgsProcessingException(str(exc)) from exc
        feedback.pushInfo(_fit_origin(result.fit_from))
        if published:
            feedback.pushInfo(
                f"As published (2024 release): lag = {result.intercept:.4f} + {result.slope:+.6f} × d' over the rows of "
                f"both bands; median deviation m = {result.median_deviation_pct:.4f} %; R² {result.r2:.4f} over "
                f"{result.pixels} rows; {result.shifted} rows deviating more than {result.threshold_pct:g} % shifted; "
                f"mean probability {result.mean_before:.2f} % → {result.mean_after:.2f} %.")
            if result.rows_left_out:
                feedback.pushWarning(
                    f"{result.rows_left_out} rows (pixel × band) have no deviation — {result.pixels_without_observation} "
                    "pixels without any observation, the rest 0 % pixels or pixels without neighbours — and are no data "
                    "in both results; the published code stops on them (infinite deviations in its fit).")
        else:
            feedback.pushInfo(
                f"Reference adjustment: p = {result.intercept:.4f} + {result.slope:+.6f} × d' (percent per percent of "
                f"deviation); median deviation m = {result.median_deviation_pct:.4f} %; R² {result.r2:.4f} over "
                f"{result.pixels} pixels; {result.shifted} pixels deviating more than {result.threshold_pct:g} % "
                f"shifted; mean {result.mean_before:.2f} % → {result.mean_after:.2f} %."
            )
        StylePostProcessor.attach(context, out_smoothed, "cloud_probability.qml",
                                  name="Neighbourhood cloud probability (%)")
        outputs = {self.OUTPUT_SMOOTHED: out_smoothed}
        if out_adjusted:
            name = "Adjusted cloud probability, as published (%)" if published else "Adjusted cloud probability (%)"
            StylePostProcessor.attach(context, out_adjusted, "cloud_probability.qml", name=name)
            outputs[self.OUTPUT_ADJUSTED] = out_adjusted
        if published and out_count:
            StylePostProcessor.attach(context, out_count, "cloud_probability.qml",
                                      name="Adjusted band 2, as published (not a count)")
            outputs[self.OUTPUT_ADJUSTED_COUNT] = out_count
        return outputs


def _fit_origin(fit_from: str | None) -> str:
    """Where the adjustment's fit came from, for the log."""
    if fit_from:
        return f"The fit of {fit_from} was applied (not fitted over this extent)."
    return ("The fit was made over this run's extent (every pixel of the counts): another extent gives another "
            "fit; FIT_FROM reuses one.")
