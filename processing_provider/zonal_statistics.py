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

from .base import CloudProbAlgorithm
from ..core.progress import Cancelled
from ..core.zonal import ZonalError, write_outputs, zonal_statistics_in_process
from .common import output_path
from .feedback import FeedbackProgress, core_logging_to
from .styling import GraduatedPostProcessor


class ZonalStatisticsAlgorithm(CloudProbAlgorithm):
    """Coverage-weighted mean, min, max, stdev and coverage of the probability per polygon."""

    NAME = "zonalstatistics"
    DISPLAY_NAME = "Cloud probability per small area"
    GROUP = "Cloud probability"
    GROUP_ID = "probability"

    INPUT_RASTER = "INPUT_RASTER"
    ZONES = "ZONES"
    ZONE_ID_FIELD = "ZONE_ID_FIELD"
    VALID = "VALID"
    OUTPUT = "OUTPUT"
    OUTPUT_CSV = "OUTPUT_CSV"

    def shortHelpString(self) -> str:  # noqa: N802
        return self.tr(
            "Exact pixel-area-weighted statistics of a probability raster per polygon, with exactextract: each "
            "cell counts by the exact fraction of it the polygon covers (and by its area on a geographic grid). "
            "Zones in any CRS are reprojected to the raster's.\n\n"
            "Columns: the id, cloud_prob_mean, min, max, stdev, coverage_pct (percent of the zone's area with "
            "data), pixel_count (sum of covered cell fractions with data) and, with the valid-count raster, "
            "valid_obs_mean and a 95 % interval of the mean (ci95_low, ci95_high) from each cell's binomial "
            "sampling error, cells taken as independent. Zones without data get NULL, not 0; invalid geometries "
            "are repaired and reported; empty ones are reported. Writes a GeoPackage layer and a CSV."
        )

    def canExecute(self):  # noqa: N802
        from .dependencies import can_execute

        return can_execute("exactextract")

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT_RASTER, self.tr("Cloud probability raster (%)")))
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.ZONES, self.tr("Small areas (polygons)"), [QgsProcessing.TypeVectorPolygon]))
        self.addParameter(QgsProcessingParameterField(self.ZONE_ID_FIELD, self.tr("Area id field"), parentLayerParameterName=self.ZONES))
        self.addParameter(QgsProcessingParameterRasterLayer(self.VALID, self.tr("Valid observations (optional)"), optional=True))
        self.addParameter(QgsProcessingParameterVectorDestination(
            self.OUTPUT, self.tr("Small areas with cloud probability"), QgsProcessing.TypeVectorPolygon))
        self.addParameter(QgsProcessingParameterFileDestination(
            self.OUTPUT_CSV, self.tr("CSV table"), self.tr("CSV files (*.csv)"), optional=True))

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
        ids, geoms = [], []
        for feature in source.getFeatures():
            ids.append(str(feature[id_field]))
            g = feature.geometry()
            geoms.append(None if g is None or g.isEmpty() else wkb.loads(bytes(g.asWkb())))
        if not ids:
            raise QgsProcessingException(self.tr("The small-area layer has no features."))
        crs = source.sourceCrs()
        zones = gpd.GeoDataFrame({id_field: ids}, geometry=geoms, crs=crs.toWkt() if not crs.authid() else crs.authid())
        feedback.pushInfo(f"{len(ids)} small areas; statistics of {raster.source()}.")
        try:
            with core_logging_to(feedback):
                # exactextract runs in its own Python: its bundled GEOS crashes inside QGIS's executables
                result = zonal_statistics_in_process(raster.source(), zones, id_field, valid.source() if valid else None,
                                                     FeedbackProgress(feedback))
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
        means = result.table["cloud_prob_mean"]
        feedback.pushInfo(
            f"Mean cloud probability over the areas {means.mean():.2f} % (min {means.min():.2f}, max {means.max():.2f}); "
            f"{int(means.isna().sum())} areas NULL."
        )
        GraduatedPostProcessor.attach(context, out, name=self.tr("Cloud probability per small area"))
        outputs = {self.OUTPUT: out}
        if csv:
            outputs[self.OUTPUT_CSV] = csv
        return outputs
