"""Write processing_provider/models/annualcloudprobability.model3 with the PyQGIS model API.

The shipped model chains search → frequency → smoothing → zonal statistics. Its outputs are
``frequency:PROBABILITY``, ``frequency:VALID``, ``frequency:CLOUDY``, ``smoothing:SMOOTHED``,
``smoothing:ADJUSTED``, ``zonal:SMALL_AREAS`` and ``zonal:SMALL_AREAS_CSV``. Run with QGIS's
Python after changing a child algorithm's parameters:

    QT_QPA_PLATFORM=offscreen .venv/bin/python scripts/make_model.py
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "processing_provider" / "models" / "annualcloudprobability.model3"


def build():
    from qgis.core import (
        QgsCoordinateReferenceSystem,
        QgsProcessing,
        QgsProcessingModelAlgorithm,
        QgsProcessingModelChildAlgorithm,
        QgsProcessingModelChildParameterSource as Source,
        QgsProcessingModelOutput,
        QgsProcessingModelParameter,
        QgsProcessingParameterCrs,
        QgsProcessingParameterDateTime,
        QgsProcessingParameterDefinition,
        QgsProcessingParameterEnum,
        QgsProcessingParameterExtent,
        QgsProcessingParameterFeatureSource,
        QgsProcessingParameterField,
        QgsProcessingParameterNumber,
        QgsProcessingParameterString,
    )
    from qgis.PyQt.QtCore import QDate, QPointF

    model = QgsProcessingModelAlgorithm(
        "annualcloudprobability", "Cloud probability", "probability")  # (name = id, group, group id)
    model.setHelpContent({
        "ALG_DESC": "Makes the reference product 'Cloud probability statistics per small area': searches Sentinel-2 "
                    "scenes (Earth Search Collection 1) for the area and period; per pixel, the mean of Sen2Cor's "
                    "cloud probability ('cloud' asset) over the observations whose SCL has data, with the "
                    "acquisition count; the adjustment on each pixel's deviation from its acquisition-weighted "
                    "21×21 neighbourhood; and exact area-weighted mean, median, min, max and standard deviation of the "
                    "adjusted probability and of the acquisition count per small area, with a 95 % interval "
                    "(GeoPackage and CSV). Measure 0 and method 0 give the cloud-frequency chain instead (SCL cloudy / "
                    "valid, smoothed counts with a regression on the smoothed count). Variant 1 reproduces the "
                    "dataset's published 2024 release exactly (docs/variants.md). The adjustment's fit depends "
                    "on the extent: the same area in a larger run can move.",
    })

    def param(definition, x, y):
        meta = QgsProcessingModelParameter(definition.name())
        meta.setPosition(QPointF(x, y))
        model.addModelParameter(definition, meta)

    def helped(definition, text):
        definition.setHelp(text)
        return definition

    param(helped(QgsProcessingParameterString("STAC_URL", "STAC API URL", "https://earth-search.aws.element84.com/v1"),
                 "The STAC API the scenes are searched in. Default: Earth Search v1, "
                 "https://earth-search.aws.element84.com/v1."), 120, 60)
    param(helped(QgsProcessingParameterString("COLLECTION", "Collection", "sentinel-2-c1-l2a"),
                 "The STAC collection of Sentinel-2 L2A scenes. Default: sentinel-2-c1-l2a (Earth Search Collection 1, "
                 "which carries the 'cloud' probability the mean cloud probability needs)."), 120, 120)
    param(helped(QgsProcessingParameterExtent("AOI", "Area of interest"),
                 "The area to work on, in any CRS; no default. Typed as text it is xmin,xmax,ymin,ymax [CRS] "
                 "(QGIS's order, not bbox order). The grid covers it and the adjustment is fitted over it."), 120, 180)
    date = QgsProcessingParameterDateTime.Type.Date
    param(helped(QgsProcessingParameterDateTime("START_DATE", "Start date", date, QDate(2024, 1, 1)),
                 "First day of the period (UTC, included), YYYY-MM-DD. Default: 2024-01-01."), 120, 240)
    param(helped(QgsProcessingParameterDateTime("END_DATE", "End date", date, QDate(2024, 12, 31)),
                 "Last day of the period (UTC, included), YYYY-MM-DD. Default: 2024-12-31."), 120, 300)
    param(helped(QgsProcessingParameterFeatureSource("ZONES", "Small areas", [QgsProcessing.SourceType.TypeVectorPolygon]),
                 "Polygons (e.g. LSOAs, Data Zones), in any CRS; no default. Each needs its own id: repeated or "
                 "NULL ids are refused before any work."), 120, 360)
    # optional for the same reason as TARGET_CRS below: a mandatory field's default is ignored by qgis_process
    param(helped(QgsProcessingParameterField("ZONE_ID_FIELD", "Area id field", "code", "ZONES", optional=True),
                 "The field that names each small area, unique per area; it keys the output table. Default: code."),
          120, 420)
    # optional: QGIS 3.22 accepts a missing CRS parameter only when it is optional, whatever its
    # default, so qgis_process refused a run without TARGET_CRS; ShippedModel fills the default in
    target_crs = QgsProcessingParameterCrs("TARGET_CRS", "Target CRS", QgsCoordinateReferenceSystem("EPSG:27700"),
                                           optional=True)
    param(helped(target_crs, "The projected CRS of the output grid (metres). Default: EPSG:27700, the British "
                             "National Grid of the reference product; elsewhere give your area's, e.g. its UTM zone."),
          120, 480)
    param(helped(QgsProcessingParameterNumber("RESOLUTION", "Resolution (metres)", QgsProcessingParameterNumber.Type.Double,
                                              20.0, False, 1.0, 10000.0),
                 "Pixel size of the output grid in metres. Default: 20, the SCL's and the cloud probability's own: "
                 "finer adds pixels, not detail (the run says what it will cost before it starts)."), 120, 540)
    # labels short enough to be read whole in the dialog (tests/test_dialogs.py); the rest in the help
    measure = QgsProcessingParameterEnum("MEASURE", "Measure", ["Cloud frequency (SCL)", "Mean cloud probability"],
                                         defaultValue=1)
    measure.setHelp("Cloud frequency: SCL cloudy / valid observations (percent). Mean cloud probability: the mean of the "
                    "'cloud' asset over the observations with data (percent; the reference product's). Default: mean "
                    "cloud probability.")
    param(measure, 120, 600)
    method = QgsProcessingParameterEnum("METHOD", "Adjustment", ["Smoothed counts", "Reference adjustment"],
                                        defaultValue=1)
    method.setHelp("Smoothed counts: regression on the smoothed count. Reference adjustment: each pixel's deviation "
                   "from its acquisition-weighted 21 × 21 pixel neighbourhood, 5 % threshold (the reference product's). "
                   "Default: reference adjustment.")
    param(method, 120, 660)
    variant = QgsProcessingParameterEnum("VARIANT", "Variant", ["The documented method", "As published (2024 release)"],
                                         defaultValue=0)
    variant.setHelp("The documented method (default): one observation per acquisition and the reference adjustment as "
                    "the dataset describes it. As published (2024 release): what the dataset's published code "
                    "computes, to reproduce its table: one observation per STAC item, the deviation pooled over the "
                    "probability and count bands, and acquisition_count_* columns that describe its adjusted band 2, "
                    "not counts; overrides Measure and Adjustment; the period must lie within one calendar year. "
                    "docs/variants.md says how the two differ. Default: the documented method.")
    param(variant, 120, 780)
    scheduler = QgsProcessingParameterString("DASK_SCHEDULER", "Dask scheduler address", "", optional=True)
    scheduler.setHelp("A dask.distributed scheduler, e.g. tcp://10.0.0.5:8786. Default: empty, run on this computer.")
    scheduler.setFlags(scheduler.flags() | QgsProcessingParameterDefinition.Flag.FlagAdvanced)
    param(scheduler, 120, 720)

    def child(alg_id, child_id, description, x, y, sources, outputs=None):
        c = QgsProcessingModelChildAlgorithm(alg_id)
        c.setChildId(child_id)
        c.setDescription(description)
        c.setPosition(QPointF(x, y))
        for name, source in sources.items():
            c.addParameterSources(name, [source])
        if outputs:
            model_outputs = {}
            for child_output, (name, description) in outputs.items():
                out = QgsProcessingModelOutput(name, description)
                # only the small areas must be named; the rest are kept only when asked for
                out.setMandatory(name == "SMALL_AREAS")
                if name != "SMALL_AREAS_CSV":
                    out.setDefaultValue("TEMPORARY_OUTPUT")
                out.setChildId(child_id)
                out.setChildOutputName(child_output)
                model_outputs[name] = out
            c.setModelOutputs(model_outputs)
        model.addChildAlgorithm(c)

    p = Source.fromModelParameter
    child("cloudprob:searchscenes", "search", "Search Sentinel-2 scenes", 420, 120, {
        "STAC_URL": p("STAC_URL"), "COLLECTION": p("COLLECTION"), "AOI": p("AOI"), "START_DATE": p("START_DATE"),
        "END_DATE": p("END_DATE"), "MAX_SCENE_CLOUD": Source.fromStaticValue(100.0), "MAX_ITEMS": Source.fromStaticValue(0),
    })
    child("cloudprob:cloudfrequency", "frequency", "Per-pixel cloud probability", 420, 260, {
        "SCENES": Source.fromChildOutput("search", "OUTPUT"), "AOI": p("AOI"), "TARGET_CRS": p("TARGET_CRS"),
        "RESOLUTION": p("RESOLUTION"), "MASK_SOURCE": Source.fromStaticValue(0), "CLOUD_CLASSES": Source.fromStaticValue("8,9,10"),
        "COUNT_SHADOWS": Source.fromStaticValue(False), "BUFFER": Source.fromStaticValue(0.0), "PERIOD": Source.fromStaticValue(0),
        "CONCURRENCY": Source.fromStaticValue(4), "MEASURE": Source.fromExpression("if(@VARIANT = 1, 1, @MEASURE)"),
        "OBSERVATIONS": Source.fromExpression("if(@VARIANT = 1, 1, 0)"),
        "FAIL_ON_READ_ERROR": Source.fromStaticValue(False),
        "PROBABILITY_ASSET": Source.fromStaticValue("cloud"), "NODATA_CLASSES": Source.fromStaticValue(""),
        "DASK_SCHEDULER": p("DASK_SCHEDULER"),
    }, {"OUTPUT_PROBABILITY": ("PROBABILITY", "Raw cloud probability (%)"),
        "OUTPUT_VALID": ("VALID", "Valid observations (count)"), "OUTPUT_CLOUDY": ("CLOUDY", "Cloudy observations"),
        "OUTPUT_STDEV": ("SPREAD", "Spread of one observation (%)")})
    child("cloudprob:smoothprobability", "smoothing", "Smooth and adjust", 420, 400, {
        "CLOUDY": Source.fromChildOutput("frequency", "OUTPUT_CLOUDY"),
        "VALID": Source.fromChildOutput("frequency", "OUTPUT_VALID"),
        "KERNEL_SIZE": Source.fromStaticValue(21), "KERNEL_SHAPE": Source.fromStaticValue(0),
        "ADJUST": Source.fromStaticValue(True), "METHOD": Source.fromExpression("if(@VARIANT = 1, 2, @METHOD)"), "DEVIATION_THRESHOLD": Source.fromStaticValue(5.0),
        "DASK_SCHEDULER": p("DASK_SCHEDULER"),
    }, {"OUTPUT_SMOOTHED": ("SMOOTHED", "Smoothed cloud probability (%)"),
        "OUTPUT_ADJUSTED": ("ADJUSTED", "Adjusted cloud probability (%)"),
        "OUTPUT_ADJUSTED_COUNT": ("ADJUSTED_COUNT", "Adjusted band 2 (not a count)")})
    child("cloudprob:zonalstatistics", "zonal", "Cloud probability per small area", 420, 540, {
        "INPUT_RASTER": Source.fromChildOutput("smoothing", "OUTPUT_ADJUSTED"), "ZONES": p("ZONES"),
        # the published table's acquisition_count_* columns are its adjusted band 2; the documented ones are counts
        "ZONE_ID_FIELD": p("ZONE_ID_FIELD"),
        "VALID": Source.fromExpression("if(@VARIANT = 1, var('Smooth_and_adjust_OUTPUT_ADJUSTED_COUNT'), "
                                       "var('Per-pixel_cloud_probability_OUTPUT_VALID'))"),
        "SPREAD": Source.fromChildOutput("frequency", "OUTPUT_STDEV"), "DASK_SCHEDULER": p("DASK_SCHEDULER"),
    }, {"OUTPUT": ("SMALL_AREAS", "Small areas with cloud probability"), "OUTPUT_CSV": ("SMALL_AREAS_CSV", "Small areas (CSV)")})
    model.updateDestinationParameters()  # what the model designer does on save: outputs become parameters
    return model


def main() -> int:
    from qgis.core import QgsApplication

    app = QgsApplication([], False)
    app.initQgis()
    # the children must resolve for their outputs to become model parameters
    plugins = ROOT / ".build" / "plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    if not (plugins / "cloud_probability").exists():
        (plugins / "cloud_probability").symlink_to(ROOT, target_is_directory=True)
    sys.path.insert(0, str(plugins))
    from cloud_probability.processing_provider.provider import CloudProbabilityProvider

    provider = CloudProbabilityProvider()
    QgsApplication.processingRegistry().addProvider(provider)
    model = build()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    if not model.toFile(str(OUT)):
        print(f"could not write {OUT}", file=sys.stderr)
        return 1
    print(OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
