"""``cloudprob:zonalstatistics`` — exact per-polygon cloud probability (adapter over core.zonal)."""
from __future__ import annotations

from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterField,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterVectorDestination,
)

from .base import CloudProbAlgorithm, with_help
from ..core.progress import Cancelled
from ..core.zonal import ZonalError, check_rasters, write_outputs, zonal_statistics, zonal_statistics_in_process
from .checks import check_zones, plain
from .common import add_scheduler_parameter, output_path, scheduler_from_parameters
from .feedback import FeedbackProgress, core_logging_to
from .styling import GraduatedPostProcessor
from .signals import stops_on_signals


class ZonalStatisticsAlgorithm(CloudProbAlgorithm):
    """Coverage-weighted mean, min, max, stdev and coverage of the probability per polygon."""

    NAME = "zonalstatistics"
    DISPLAY_NAME = "Cloud probability per small area"
    GROUP = "Cloud probability"
    GROUP_ID = "probability"
    REQUIRES = ("exactextract", "geopandas", "rasterio", "shapely")

    INPUT_RASTER = "INPUT_RASTER"
    ZONES = "ZONES"
    ZONE_ID_FIELD = "ZONE_ID_FIELD"
    VALID = "VALID"
    SPREAD = "SPREAD"
    OUTPUT = "OUTPUT"
    OUTPUT_CSV = "OUTPUT_CSV"

    def shortHelpString(self) -> str:  # noqa: N802
        return self.tr(
            "Exact pixel-area-weighted statistics of a probability raster per polygon, with exactextract: each "
            "cell counts by the exact fraction of it the polygon covers (and by its area on a geographic grid). "
            "Zones in any CRS are reprojected to the raster's.\n\n"
            "Fields (the reference product's, coverage-weighted): probability_mean, probability_median, "
            "probability_min, probability_max, probability_stdev (percent; stdev in percentage points over the "
            "area's cells), coverage_pct (percent of the area with data), covered_cells (area-weighted, fractional "
            "count of cells with data); with the valid-observation raster also acquisition_count_mean, _median, "
            "_min, _max, _stdev and a 95 % interval of the mean (probability_ci95_low, probability_ci95_high). "
            "The interval treats the area as observed by its acquisitions, which all its cells share (standard "
            "error = spread / √acquisitions), with the spread of one observation from the optional spread raster "
            "of 'Per-pixel cloud probability', or √(p(100 − p)) without it. The areas' own attributes are "
            "carried through. Areas without data get NULL, not 0; invalid geometries "
            "are repaired and reported; empty ones are reported. Writes a GeoPackage layer and a CSV.\n\n"
            "The area id field keys the table: the areas are refused, before any work, when an id repeats or is "
            "NULL (the table could not be joined back); the message names the repeated ids and the layer's "
            "fields that are unique. Areas made of several features: dissolve them by the id first."
        )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(with_help(QgsProcessingParameterRasterLayer(
            self.INPUT_RASTER, self.tr("Cloud probability raster (%)")),
            self.tr("A probability raster in percent (band 1), e.g. the adjusted probability; no default.")))
        self.addParameter(with_help(QgsProcessingParameterFeatureSource(
            self.ZONES, self.tr("Small areas (polygons)"), [QgsProcessing.SourceType.TypeVectorPolygon]),
            self.tr("Polygons in any CRS, each with an id of its own; no default.")))
        self.addParameter(with_help(QgsProcessingParameterField(
            self.ZONE_ID_FIELD, self.tr("Area id field"), parentLayerParameterName=self.ZONES),
            self.tr("The field that names each area, unique per area (repeated or NULL ids are refused); it keys "
                    "the table. No default.")))
        self.addParameter(with_help(QgsProcessingParameterRasterLayer(
            self.VALID, self.tr("Valid observations (count)"), optional=True),
            self.tr("The acquisition count from 'Per-pixel cloud probability': adds its statistics and the interval. "
                    "Default: none.")))
        self.addParameter(with_help(QgsProcessingParameterRasterLayer(
            self.SPREAD, self.tr("Spread of one observation (%)"), optional=True),
            self.tr("From 'Per-pixel cloud probability' (percent); the interval of the mean is built on it. "
                    "Default: none, √(p(100 − p)).")))
        add_scheduler_parameter(self)
        self.addParameter(with_help(QgsProcessingParameterVectorDestination(
            self.OUTPUT, self.tr("Small areas with cloud probability"), QgsProcessing.SourceType.TypeVectorPolygon),
            self.tr("A GeoPackage: the areas with their statistics (percent; counts of acquisitions), NULL where "
                    "no data.")))
        self.addParameter(with_help(QgsProcessingParameterFileDestination(
            self.OUTPUT_CSV, self.tr("CSV table"), self.tr("CSV files (*.csv)"), optional=True),
            self.tr("The same table without geometries. Default: not written.")))

    def check_inputs(self, parameters, context) -> None:
        """The areas (polygons, a unique id per area) and the rasters' grids, before any work."""
        check_zones(self, parameters, context, self.ZONES, self.ZONE_ID_FIELD)
        raster = self.parameterAsRasterLayer(parameters, self.INPUT_RASTER, context)
        if raster is None:
            raise QgsProcessingException(self.invalidRasterError(parameters, self.INPUT_RASTER))
        valid = self.parameterAsRasterLayer(parameters, self.VALID, context)
        spread = self.parameterAsRasterLayer(parameters, self.SPREAD, context)
        try:
            check_rasters(raster.source(), valid.source() if valid else None, spread.source() if spread else None)
        except ZonalError as exc:
            raise QgsProcessingException(str(exc)) from exc

    @stops_on_signals
    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        import geopandas as gpd
        from shapely import wkb

        raster = self.parameterAsRasterLayer(parameters, self.INPUT_RASTER, context)
        source = self.parameterAsSource(parameters, self.ZONES, context)
        if raster is None or source is None:
            raise QgsProcessingException(self.tr("A probability raster and a polygon layer are needed."))
        id_field = self.parameterAsString(parameters, self.ZONE_ID_FIELD, context)
        if source.fields().indexOf(id_field) < 0:
            raise QgsProcessingException(f"The small areas have no field '{id_field}'.")
        valid = self.parameterAsRasterLayer(parameters, self.VALID, context)
        spread = self.parameterAsRasterLayer(parameters, self.SPREAD, context)
        if spread is not None and valid is None:
            raise QgsProcessingException(self.tr("The interval needs the valid observations besides the spread."))
        names = [f.name() for f in source.fields() if f.name() != id_field and f.name().lower() != "fid"]
        ids, geoms, rows = [], [], []
        for feature in source.getFeatures():
            ids.append(plain(feature[id_field]))
            rows.append([plain(feature[name]) for name in names])
            g = feature.geometry()
            geoms.append(None if g is None or g.isEmpty() else wkb.loads(bytes(g.asWkb())))
        if not ids:
            raise QgsProcessingException(self.tr("The small-area layer has no features."))
        crs = source.sourceCrs()
        columns = {id_field: ids}
        for k, name in enumerate(names):
            columns[name] = [row[k] for row in rows]
        zones = gpd.GeoDataFrame(columns, geometry=geoms, crs=crs.toWkt() if not crs.authid() else crs.authid())
        feedback.pushInfo(f"{len(ids)} small areas; statistics of {raster.source()}.")
        executor = scheduler_from_parameters(self, parameters, context, feedback)
        try:
            with core_logging_to(feedback):
                if executor is not None:  # exactextract runs on the workers, never in this process
                    result = zonal_statistics(raster.source(), zones, id_field, valid.source() if valid else None,
                                              FeedbackProgress(feedback), spread_path=spread.source() if spread else None,
                                              scheduler=executor)
                else:  # exactextract runs in its own Python: its bundled GEOS crashes inside QGIS's executables
                    result = zonal_statistics_in_process(
                        raster.source(), zones, id_field, valid.source() if valid else None, FeedbackProgress(feedback),
                        spread_path=spread.source() if spread else None)
        except Cancelled:
            feedback.pushWarning(self.tr("Cancelled; nothing was written."))
            return {}
        except ZonalError as exc:
            raise QgsProcessingException(str(exc)) from exc
        if feedback.isCanceled():
            return {}
        for label, items in (("repaired invalid geometries", result.invalid), ("empty geometries (NULL)", result.empty),
                             ("without data (NULL)", result.no_data)):
            if items:
                shown = ", ".join(items[:20]) + (" …" if len(items) > 20 else "")
                feedback.pushWarning(f"{len(items)} areas with {label}: {shown}")
        out = output_path(self, parameters, self.OUTPUT, context, "gpkg")
        csv = self.parameterAsFileOutput(parameters, self.OUTPUT_CSV, context) if parameters.get(self.OUTPUT_CSV) else None
        write_outputs(result, zones, id_field, out, csv)
        means = result.table["probability_mean"]
        feedback.pushInfo(
            f"Mean cloud probability over the areas {means.mean():.2f} % (min {means.min():.2f}, max {means.max():.2f}); "
            f"{int(means.isna().sum())} areas NULL."
        )
        GraduatedPostProcessor.attach(context, out, name=self.tr("Cloud probability per small area"))
        outputs = {self.OUTPUT: out}
        if csv:
            outputs[self.OUTPUT_CSV] = csv
        return outputs

