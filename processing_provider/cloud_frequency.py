"""``cloudprob:cloudfrequency`` — per-pixel cloud probability over a period (adapter over core.frequency)."""
from __future__ import annotations

from qgis.core import (
    QgsProcessingException,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterCrs,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
)

from .base import CloudProbAlgorithm, with_help
from .checks import check_cost, destination_file, scene_footprints
from ..core.frequency import MEASURES, OBSERVATIONS, FrequencyError, cloud_frequency, periods_for
from ..core.masks import MaskError, parse_classes
from ..core.progress import Cancelled
from .common import (
    add_mask_parameters, add_scenes_parameter, add_scheduler_parameter, check_scenes_layer, grid_from_parameters,
    mask_spec, output_path, scenes_from_source, scheduler_from_parameters,
)
from .feedback import FeedbackProgress, core_logging_to
from .styling import StylePostProcessor
from .signals import stops_on_signals

PERIODS = ["all", "month"]


class CloudFrequencyAlgorithm(CloudProbAlgorithm):
    """Valid and cloudy observation counts and the cloud probability on one grid."""

    NAME = "cloudfrequency"
    DISPLAY_NAME = "Per-pixel cloud probability"
    GROUP = "Cloud probability"
    GROUP_ID = "probability"
    REQUIRES = ("urllib3", "rasterio", "shapely", "pyproj", "scipy")

    SCENES = "SCENES"
    AOI = "AOI"
    TARGET_CRS = "TARGET_CRS"
    RESOLUTION = "RESOLUTION"
    GRID_LIKE = "GRID_LIKE"
    PERIOD = "PERIOD"
    CONCURRENCY = "CONCURRENCY"
    MEASURE = "MEASURE"
    OBSERVATIONS = "OBSERVATIONS"
    PROBABILITY_ASSET = "PROBABILITY_ASSET"
    NODATA_CLASSES = "NODATA_CLASSES"
    FAIL_ON_READ_ERROR = "FAIL_ON_READ_ERROR"
    OUTPUT_PROBABILITY = "OUTPUT_PROBABILITY"
    OUTPUT_VALID = "OUTPUT_VALID"
    OUTPUT_CLOUDY = "OUTPUT_CLOUDY"
    OUTPUT_STDEV = "OUTPUT_STDEV"

    def shortHelpString(self) -> str:  # noqa: N802
        return self.tr(
            "Composites every acquisition in the scenes layer onto one grid and gives, per pixel, the number of "
            "valid observations and the cloud probability over them (percent; no data where there is no valid "
            "observation). Keep the counts: a probability from 3 observations is not one from 150.\n\n"
            "Measure 'Cloud frequency': cloudy / valid observations by the mask (SCL cloud classes). Measure "
            "'Mean cloud probability' (the reference product's): the mean of the probability asset (Earth Search "
            "Collection 1 'cloud', Sen2Cor's cloud probability, 0–100 %) over the observations whose SCL has data "
            "(every class but 0); the asset's own no-data tag is ignored, since 0 % is a real value. For both, "
            "'Cloudy observations' holds Σ probability / 100, so probability = 100 × cloudy / valid and the "
            "smoothing stays acquisition-weighted. 'SCL classes that are no data' overrides the measure's rule "
            "(empty: 0 for the mean, 0 and 1 for the frequency). The optional spread raster is the standard "
            "deviation of one observation (percent), on which the per-area intervals are built.\n\n"
            "Each acquisition counts once per pixel: neighbouring MGRS tiles, split datastrips and reprocessed "
            "duplicates of one datatake are combined, and scenes from several UTM zones are resampled (nearest, "
            "exact) onto the grid. Valid = every SCL class but no data (0) and defective (1); cloudy = the "
            "cloud classes (8, 9, 10 by default), plus shadows (3) when asked.\n\n"
            "'Observations' 'One per product (2024 release)' counts as the reference dataset's "
            "published code does (odc.stac.load's default grouping): one observation per STAC item, items of "
            "exactly the same datetime fused band by band, so a pixel where two MGRS tiles of one acquisition "
            "overlap counts twice; its period must lie within one calendar year (the code makes one layer per "
            "year). See docs/variants.md for what it changes.\n\n"
            "Grid: the extent in the target CRS (default: the extent's CRS if projected, else the UTM zone of "
            "its centre; EPSG:27700 for the UK) at the resolution, edges on multiples of the resolution; or the "
            "grid of an existing raster. Period: one band for the whole period, or one per month.\n\n"
            "An acquisition that cannot be read (a product missing, truncated or refused by the server) is left "
            "out of every tile it touches, named in the log, counted in the rasters' metadata and listed in a "
            "CSV beside the probability raster, named after it (probability.unreadable.csv); 'Stop on an "
            "unreadable scene' fails the run instead.\n\n"
            "Work is done in tiles and saved as it goes: a cancelled or failed run resumes from the finished "
            "tiles when re-run, a run with an edited scene list resumes every tile the edit does not touch, and "
            "nothing half-written is left."
        )

    def initAlgorithm(self, config=None):  # noqa: N802
        add_scenes_parameter(self)
        self.addParameter(with_help(QgsProcessingParameterExtent(
            self.AOI, self.tr("Extent of the output grid"), optional=True),
            self.tr("The area the grid covers, any CRS; xmin,xmax,ymin,ymax [CRS] as text. No default: give this "
                    "or a raster whose grid to use.")))
        self.addParameter(with_help(QgsProcessingParameterCrs(
            self.TARGET_CRS, self.tr("Target CRS"), optional=True),
            self.tr("A projected CRS (metres). Default: empty, the extent's CRS if projected, else the UTM zone of "
                    "its centre.")))
        self.addParameter(with_help(QgsProcessingParameterNumber(
            self.RESOLUTION, self.tr("Resolution (metres)"), QgsProcessingParameterNumber.Type.Double, 20.0, False,
            1.0, 10000.0),
            self.tr("Pixel size of the grid in metres. Default: 20, the SCL's own: finer adds pixels, not detail "
                    "(the run says what it will cost before it starts).")))
        self.addParameter(with_help(QgsProcessingParameterRasterLayer(
            self.GRID_LIKE, self.tr("Use the grid of this raster"), optional=True),
            self.tr("Instead of the extent, target CRS and resolution. Default: none.")))
        self.addParameter(with_help(QgsProcessingParameterEnum(
            self.MEASURE, self.tr("Measure"),
            options=[self.tr("Cloud frequency (SCL)"), self.tr("Mean cloud probability")], defaultValue=0),
            self.tr("Cloud frequency: SCL cloudy / valid observations (percent). Mean cloud probability: the mean of "
                    "the probability asset over the observations with data (percent; the reference product's). "
                    "Default: cloud frequency.")))
        self.addParameter(with_help(QgsProcessingParameterEnum(
            self.OBSERVATIONS, self.tr("Observations"),
            options=[self.tr("One per acquisition (datatake)"), self.tr("One per product (2024 release)")],
            defaultValue=0),
            self.tr("One per acquisition (default, the documented method): the products of one datatake counted "
                    "once per pixel. One per product: each STAC item counts, same-datetime items fused, as the "
                    "2024 release's code does (overlaps of MGRS tiles count twice). Default: one per acquisition.")))
        self.addParameter(with_help(QgsProcessingParameterString(
            self.PROBABILITY_ASSET, self.tr("Probability asset (0–100 %)"), "cloud"),
            self.tr("STAC asset key read by the mean cloud probability (values 0–100 %). Default: cloud, Earth "
                    "Search Collection 1's name for it.")))
        self.addParameter(with_help(QgsProcessingParameterString(
            self.NODATA_CLASSES, self.tr("SCL classes that are no data"), "", optional=True),
            self.tr("Comma separated SCL class codes. Default: empty, the measure's own rule (0 for the mean, 0 and "
                    "1 for the frequency).")))
        add_mask_parameters(self)
        self.addParameter(with_help(QgsProcessingParameterEnum(
            self.PERIOD, self.tr("Period"), options=[self.tr("Whole period (one band)"), self.tr("One band per month")],
            defaultValue=0), self.tr("One band for the whole period, or one per calendar month. Default: one band.")))
        self.addParameter(with_help(QgsProcessingParameterBoolean(
            self.FAIL_ON_READ_ERROR, self.tr("Stop on an unreadable scene"), False),
            self.tr("Ticked, the run stops at an unreadable acquisition. Default: unticked, it is left out and named "
                    "in the log.")))
        self.addParameter(with_help(QgsProcessingParameterNumber(
            self.CONCURRENCY, self.tr("Scenes read at once"), QgsProcessingParameterNumber.Type.Integer, 4, False, 1,
            64), self.tr("Acquisitions read at the same time (a count, 1–64). Default: 4; about 2 × the CPU cores, "
                         "more for a distant server.")))
        # optional with a temporary file by default: a model (or qgis_process) run that names none of
        # them still makes them for the next stage (QGIS 3.22 makes a model's outputs mandatory
        # when its children's are)
        add_scheduler_parameter(self)
        self.addParameter(with_help(QgsProcessingParameterRasterDestination(
            self.OUTPUT_PROBABILITY, self.tr("Cloud probability (%)"), optional=True),
            self.tr("Per pixel, 100 × cloudy / valid observations (percent); no data without a valid observation.")))
        self.addParameter(with_help(QgsProcessingParameterRasterDestination(
            self.OUTPUT_VALID, self.tr("Valid observations (count)"), optional=True),
            self.tr("Per pixel, the number of acquisitions with a valid observation (count).")))
        self.addParameter(with_help(QgsProcessingParameterRasterDestination(
            self.OUTPUT_CLOUDY, self.tr("Cloudy observations (count)"), optional=True),
            self.tr("For the mean cloud probability, Σ probability / 100: the expected number of cloudy "
                    "observations.")))
        self.addParameter(with_help(QgsProcessingParameterRasterDestination(
            self.OUTPUT_STDEV, self.tr("Spread of one observation (%)"), optional=True),
            self.tr("Standard deviation of one observation per pixel (percent); the per-area interval is built on "
                    "it.")))

    def check_inputs(self, parameters, context) -> None:
        """The scenes layer, the grid and the classes, before any scene is read."""
        check_scenes_layer(self, parameters, self.SCENES, context)
        mask_spec(self, parameters, context)
        nodata_text = (self.parameterAsString(parameters, self.NODATA_CLASSES, context) or "").strip()
        try:
            parse_classes(nodata_text) if nodata_text else None
        except MaskError as exc:
            raise QgsProcessingException(str(exc)) from exc
        grid = grid_from_parameters(self, parameters, context, self.AOI, self.TARGET_CRS, self.RESOLUTION,
                                    self.GRID_LIKE, warn=False)
        check_cost(self, parameters, context, self._cost(parameters, context, grid))

    def _cost(self, parameters, context, grid):
        """What the run will cost (core.costs): pixels, time, and disk where its outputs and its
        resume cache go."""
        from ..core.costs import frequency_cost, frequency_work
        from ..core.frequency import default_cache_dir

        footprints, months = scene_footprints(self.parameterAsSource(parameters, self.SCENES, context), context)
        bands = months if PERIODS[self.parameterAsEnum(parameters, self.PERIOD, context)] == "month" else 1
        outputs = {key: destination_file(self, parameters, name, context, "tif") for key, name in (
            ("probability", self.OUTPUT_PROBABILITY), ("valid", self.OUTPUT_VALID), ("cloudy", self.OUTPUT_CLOUDY),
            ("stdev", self.OUTPUT_STDEV))}
        return frequency_cost(grid.shape, bands, frequency_work(footprints, grid.crs, grid.transform, grid.shape),
                              MEASURES[self.parameterAsEnum(parameters, self.MEASURE, context)], grid.resolution,
                              outputs, str(default_cache_dir()))

    @stops_on_signals
    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        source = self.parameterAsSource(parameters, self.SCENES, context)
        if source is None:
            raise QgsProcessingException(self.invalidSourceError(parameters, self.SCENES))
        scenes = [s for s, _ in scenes_from_source(source, feedback)]
        if not scenes:
            raise QgsProcessingException(self.tr("The scenes layer holds no scenes."))
        grid = grid_from_parameters(self, parameters, context, self.AOI, self.TARGET_CRS, self.RESOLUTION, self.GRID_LIKE)
        check_cost(self, parameters, context, self._cost(parameters, context, grid), feedback)
        spec = mask_spec(self, parameters, context)
        measure = MEASURES[self.parameterAsEnum(parameters, self.MEASURE, context)]
        nodata_text = (self.parameterAsString(parameters, self.NODATA_CLASSES, context) or "").strip()
        try:
            nodata_classes = parse_classes(nodata_text) if nodata_text else None
        except MaskError as exc:
            raise QgsProcessingException(str(exc)) from exc
        asset = (self.parameterAsString(parameters, self.PROBABILITY_ASSET, context) or "").strip() or "cloud"
        if measure == "mean_probability":
            missing = [s.item_id for s in scenes if not s.asset_href(asset)]
            if missing:
                raise QgsProcessingException(
                    f"{len(missing)} of {len(scenes)} scenes have no '{asset}' asset (e.g. {missing[0]}). The mean "
                    "cloud probability needs Earth Search Collection 1 (collection 'sentinel-2-c1-l2a'), whose items "
                    "carry Sen2Cor's 'cloud' probability; or choose the cloud frequency measure.")
        periods = periods_for(PERIODS[self.parameterAsEnum(parameters, self.PERIOD, context)], scenes)
        observations = OBSERVATIONS[self.parameterAsEnum(parameters, self.OBSERVATIONS, context)]
        outputs = {
            "probability": output_path(self, parameters, self.OUTPUT_PROBABILITY, context, "tif"),
            "valid": output_path(self, parameters, self.OUTPUT_VALID, context, "tif"),
            "cloudy": output_path(self, parameters, self.OUTPUT_CLOUDY, context, "tif"),
            # always made (a temporary file when unnamed): a model's zonal statistics build their
            # interval on it, and a model passes its children no name for an unnamed output
            "stdev": output_path(self, parameters, self.OUTPUT_STDEV, context, "tif"),
        }
        feedback.pushInfo(
            f"Grid {grid.shape[1]} × {grid.shape[0]} pixels of {grid.resolution:g} m in {grid.crs}; "
            f"{len(scenes)} scenes, {len({s.datatake_id for s in scenes})} acquisitions "
            f"({'one observation per product, as published' if observations == 'product' else 'one observation per acquisition'}); "
            f"{len(periods)} band(s); "
            f"measure: {'mean of ' + repr(asset) if measure == 'mean_probability' else 'cloud frequency'}."
        )
        executor = scheduler_from_parameters(self, parameters, context, feedback)
        try:
            with core_logging_to(feedback):
                result = cloud_frequency(
                    scenes, grid, spec, outputs, periods,
                    concurrency=self.parameterAsInt(parameters, self.CONCURRENCY, context),
                    progress=FeedbackProgress(feedback), measure=measure, probability_asset=asset,
                    nodata_classes=nodata_classes,
                    fail_on_read_error=self.parameterAsBool(parameters, self.FAIL_ON_READ_ERROR, context),
                    scheduler=executor, observations=observations,
                )
        except Cancelled:
            feedback.pushWarning(self.tr("Cancelled; finished tiles are kept and a re-run resumes from them. Nothing was written."))
            return {}
        except FrequencyError as exc:
            raise QgsProcessingException(str(exc)) from exc
        mean = result.stats["mean_probability_pct"]
        feedback.pushInfo(
            f"{result.pixel_observations / 1e6:.1f} million pixel-observations from {result.acquisitions} acquisitions "
            f"in {result.seconds:.1f} s ({result.pixel_observations / 1e6 / max(result.seconds, 1e-9):.1f} M/s); "
            f"{result.tiles} tiles, {result.tiles_resumed} resumed from an earlier run; "
            f"{result.bytes_fetched / 1e6:.1f} MB fetched. Mean probability: "
            + ", ".join(f"{p.label} {m:.1f} %" if m is not None else f"{p.label} -" for p, m in zip(periods, mean))
        )
        if result.unreadable:
            feedback.pushWarning(
                f"{len(result.unreadable)} acquisition(s) could not be read and were left out; they are listed in "
                f"{result.unreadable_csv}.")
        label = "Mean cloud probability (%)" if measure == "mean_probability" else "Cloud frequency (%)"
        StylePostProcessor.attach(context, outputs["probability"], "cloud_probability.qml", name=label)
        StylePostProcessor.attach(context, outputs["valid"], "observation_count.qml", name="Valid observations (count)")
        StylePostProcessor.attach(context, outputs["cloudy"], "observation_count.qml", name="Cloudy observations (count)")
        results = {self.OUTPUT_PROBABILITY: outputs["probability"], self.OUTPUT_VALID: outputs["valid"],
                   self.OUTPUT_CLOUDY: outputs["cloudy"]}
        StylePostProcessor.attach(context, outputs["stdev"], "cloud_probability.qml", name="Spread of one observation (%)")
        results[self.OUTPUT_STDEV] = outputs["stdev"]
        return results
