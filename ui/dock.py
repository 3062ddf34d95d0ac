"""The "Cloud probability" dock: find the scenes that are clear over an area, interactively.

Search and screening run as the Processing algorithms cloudprob:searchscenes and
cloudprob:screenscenes in background tasks (the window stays responsive; Cancel works); the
results fill a sortable table and a chart of the area's cloud share over time, and a selected
scene can be added to the map as true colour and SCL layers.
"""
from __future__ import annotations

from pathlib import Path

from qgis.core import (
    QgsApplication,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsFeatureRequest,
    QgsMapLayerProxyModel,
    QgsMessageLog,
    QgsProcessingAlgRunnerTask,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingUtils,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsSettings,
    QgsVectorLayer,
)
from qgis.gui import QgsDockWidget, QgsMapLayerComboBox, QgsMapToolExtent
from qgis.PyQt.QtCore import QDate, Qt, QTimer, pyqtSignal
from qgis.PyQt.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDateEdit,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QScrollArea,
    QSpinBox,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

STYLES = Path(__file__).resolve().parent / "styles"
try:  # QGIS ≥ 3.30 (and QGIS 4) name the geometry types in Qgis
    from qgis.core import Qgis

    _POLYGON = Qgis.GeometryType.Polygon
except AttributeError:
    from qgis.core import QgsWkbTypes

    _POLYGON = QgsWkbTypes.GeometryType.PolygonGeometry
CATALOGUES = [
    ("Earth Search v1 (Element 84)", "https://earth-search.aws.element84.com/v1", "sentinel-2-c1-l2a"),
    ("Microsoft Planetary Computer", "https://planetarycomputer.microsoft.com/api/stac/v1", "sentinel-2-l2a"),
    ("Custom STAC API", "", "sentinel-2-c1-l2a"),
]
COLUMNS = ["date", "platform", "MGRS tiles", "scene\ncloud %", "area\ncloud %", "area\nvalid %", "products"]
SETTINGS = "cloud_probability/dock"


class _NumericItem(QTableWidgetItem):
    """Sorts by number, shows a rounded value."""

    def __init__(self, value, form: str = "{:.1f}"):
        super().__init__("" if value is None else form.format(value))
        self.value = float("inf") if value is None else float(value)

    def __lt__(self, other):  # noqa: D105
        return self.value < getattr(other, "value", float("inf"))


class CloudProbabilityDock(QgsDockWidget):
    """Area, catalogue, dates and thresholds in; clear scenes out."""

    finished = pyqtSignal(bool)  # search + screening done (True) or failed/cancelled (False)

    def __init__(self, iface, parent=None):
        super().__init__("Cloud probability", parent)
        self.setObjectName("CloudProbabilityDock")
        self.iface = iface
        self.canvas = iface.mapCanvas()
        self.task = None
        self.feedback = None
        self.context = None
        self.drawn_extent: QgsRectangle | None = None
        self.drawn_crs = None
        self.screened_layer: QgsVectorLayer | None = None
        self.rows: list[dict] = []  # the acquisitions the thresholds keep (the table)
        self.all_rows: list[dict] = []  # every acquisition screened (the chart)
        self.area_band = None  # the drawn area's outline on the map
        self.highlight = None
        self.highlighted_fid = None
        self.added_group = None
        self._build()
        self.load_settings()

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        body = QWidget()
        layout = QVBoxLayout(body)

        area = QGroupBox("Area")
        area_layout = QVBoxLayout(area)
        self.area_canvas = QRadioButton("Current map extent")
        self.area_drawn = QRadioButton("Rectangle drawn on the map")
        self.area_layer = QRadioButton("Polygon layer (selected features, else all)")
        self.area_canvas.setChecked(True)
        self.draw_button = QPushButton("Draw…")
        self.draw_button.clicked.connect(self.start_drawing)
        self.layer_combo = QgsMapLayerComboBox()
        self.layer_combo.setFilters(QgsMapLayerProxyModel.Filter.PolygonLayer)
        row = QHBoxLayout()
        row.addWidget(self.area_drawn)
        row.addWidget(self.draw_button)
        area_layout.addWidget(self.area_canvas)
        area_layout.addLayout(row)
        row = QHBoxLayout()
        row.addWidget(self.area_layer)
        row.addWidget(self.layer_combo, 1)
        area_layout.addLayout(row)
        layout.addWidget(area)

        search = QGroupBox("Search")
        form = QFormLayout(search)
        self.catalogue = QComboBox()
        for label, url, _ in CATALOGUES:
            self.catalogue.addItem(label, url)
        self.catalogue.currentIndexChanged.connect(self._catalogue_changed)
        self.url = QLineEdit()
        self.collection = QLineEdit("sentinel-2-c1-l2a")
        self.start = QDateEdit(QDate(QDate.currentDate().year() - 1, 1, 1))
        self.end = QDateEdit(QDate(QDate.currentDate().year() - 1, 12, 31))
        for edit in (self.start, self.end):
            edit.setCalendarPopup(True)
            edit.setDisplayFormat("yyyy-MM-dd")
        self.max_scene_cloud = self._spin(100.0)
        self.max_area_cloud = self._spin(30.0)
        self.min_valid = self._spin(50.0)
        self.concurrency = QSpinBox()
        self.concurrency.setRange(1, 128)
        self.concurrency.setValue(32)
        form.addRow("Catalogue", self.catalogue)
        form.addRow("STAC API URL", self.url)
        form.addRow("Collection", self.collection)
        form.addRow("Period (UTC days)", _row(self.start, QLabel("to"), self.end))
        self.max_scene_cloud.setToolTip("eo:cloud_cover: percent of each whole product, not of your area")
        form.addRow("Max cloud %", _row(QLabel("scene"), self.max_scene_cloud, QLabel("in the area"), self.max_area_cloud))
        form.addRow("Min valid data in the area %",
                    _row(self.min_valid, QLabel("scenes read at once"), self.concurrency))
        layout.addWidget(search)

        buttons = QHBoxLayout()
        self.search_button = QPushButton("Search")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.search_button.clicked.connect(self.search)
        self.cancel_button.clicked.connect(self.cancel)
        buttons.addWidget(self.search_button)
        buttons.addWidget(self.cancel_button)
        layout.addLayout(buttons)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSortingEnabled(True)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.itemSelectionChanged.connect(self._selection_changed)
        self.table.setMinimumHeight(160)
        self.table.verticalHeader().setDefaultSectionSize(self.table.fontMetrics().height() + 8)
        self.table.verticalHeader().hide()  # row numbers mean nothing once sorted

        self.chart = _Chart(self)
        results = QSplitter(Qt.Orientation.Vertical)  # the user shares the height between the table and the chart
        results.addWidget(self.table)
        results.addWidget(self.chart)
        results.setStretchFactor(0, 3)
        results.setStretchFactor(1, 2)
        results.setChildrenCollapsible(False)
        layout.addWidget(results, 1)
        for spin in (self.max_area_cloud, self.min_valid):
            spin.valueChanged.connect(self._refilter)

        actions = QHBoxLayout()
        self.add_button = QPushButton("Add acquisition to map")
        self.zoom_button = QPushButton("Zoom to area")
        self.model_button = QPushButton("Annual model…")
        self.add_button.clicked.connect(self.add_selected_scene)
        self.zoom_button.clicked.connect(self.zoom_to_area)
        self.model_button.clicked.connect(self.open_annual_model)
        extent_note = ("The annual model's adjustment is fitted over this area: another area gives another fit and "
                       "slightly different adjusted values. To compare runs, reuse one fit (FIT_FROM of 'Smooth and "
                       "adjust the cloud probability').")
        self.model_button.setToolTip(extent_note)
        area.setToolTip(extent_note)
        for b in (self.add_button, self.zoom_button, self.model_button):
            actions.addWidget(b)
        layout.addLayout(actions)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(body)
        self.setWidget(scroll)

    @staticmethod
    def _spin(value: float) -> QDoubleSpinBox:
        spin = QDoubleSpinBox()
        spin.setRange(0.0, 100.0)
        spin.setDecimals(1)
        spin.setValue(value)
        return spin

    def _catalogue_changed(self, index: int) -> None:
        url = CATALOGUES[index][1]
        if url:
            self.url.setText(url)
        self.url.setReadOnly(bool(url))

    # ------------------------------------------------------------------ settings
    def load_settings(self) -> None:
        s = QgsSettings()
        index = int(s.value(f"{SETTINGS}/catalogue", 0))
        self.catalogue.setCurrentIndex(index)
        self._catalogue_changed(index)
        custom = s.value(f"{SETTINGS}/url", "")
        if not CATALOGUES[index][1] and custom:
            self.url.setText(custom)
        self.collection.setText(s.value(f"{SETTINGS}/collection", "sentinel-2-c1-l2a"))
        self.max_scene_cloud.setValue(float(s.value(f"{SETTINGS}/max_scene_cloud", 100.0)))
        self.max_area_cloud.setValue(float(s.value(f"{SETTINGS}/max_area_cloud", 30.0)))
        self.min_valid.setValue(float(s.value(f"{SETTINGS}/min_valid", 50.0)))
        self.concurrency.setValue(int(s.value(f"{SETTINGS}/concurrency", 32)))
        for edit, key in ((self.start, "start"), (self.end, "end")):
            saved = QDate.fromString(str(s.value(f"{SETTINGS}/{key}", "")), "yyyy-MM-dd")
            if saved.isValid():
                edit.setDate(saved)

    def save_settings(self) -> None:
        s = QgsSettings()
        s.setValue(f"{SETTINGS}/catalogue", self.catalogue.currentIndex())
        s.setValue(f"{SETTINGS}/url", self.url.text())
        s.setValue(f"{SETTINGS}/collection", self.collection.text())
        s.setValue(f"{SETTINGS}/max_scene_cloud", self.max_scene_cloud.value())
        s.setValue(f"{SETTINGS}/max_area_cloud", self.max_area_cloud.value())
        s.setValue(f"{SETTINGS}/min_valid", self.min_valid.value())
        s.setValue(f"{SETTINGS}/concurrency", self.concurrency.value())
        s.setValue(f"{SETTINGS}/start", self.start.date().toString("yyyy-MM-dd"))
        s.setValue(f"{SETTINGS}/end", self.end.date().toString("yyyy-MM-dd"))

    # ------------------------------------------------------------------ area
    def start_drawing(self) -> None:
        """Let the user drag a rectangle on the map."""
        self.previous_tool = self.canvas.mapTool()
        self.extent_tool = QgsMapToolExtent(self.canvas)
        self.extent_tool.extentChanged.connect(self._drawn)
        self.canvas.setMapTool(self.extent_tool)

    def _drawn(self, extent: QgsRectangle) -> None:
        self.set_drawn_extent(extent, self.canvas.mapSettings().destinationCrs())
        if getattr(self, "previous_tool", None) is not None:
            self.canvas.setMapTool(self.previous_tool)

    def set_drawn_extent(self, extent: QgsRectangle, crs: QgsCoordinateReferenceSystem) -> None:
        self.drawn_extent, self.drawn_crs = QgsRectangle(extent), crs
        self.area_drawn.setChecked(True)
        self._outline_area()

    def _outline_area(self, *_) -> None:
        """The drawn rectangle outlined on the map (in the map's CRS, redrawn when that changes),
        shown while the drawn rectangle is the chosen area."""
        from qgis.core import QgsGeometry
        from qgis.gui import QgsRubberBand
        from qgis.PyQt.QtGui import QColor

        if self.drawn_extent is None:
            return
        if self.area_band is None:
            self.area_band = QgsRubberBand(self.canvas, _POLYGON)
            self.area_band.setStrokeColor(QColor(255, 127, 0))
            self.area_band.setFillColor(QColor(255, 127, 0, 0))
            self.area_band.setWidth(2)
            self.canvas.destinationCrsChanged.connect(self._outline_area)
            self.area_drawn.toggled.connect(self._outline_area)
        self.area_band.setToGeometry(QgsGeometry.fromRect(self.drawn_extent), self.drawn_crs)
        self.area_band.setVisible(self.area_drawn.isChecked())

    def area(self):
        """(extent string for AOI, polygon layer or None) of the chosen area."""
        if self.area_layer.isChecked():
            layer = self.layer_combo.currentLayer()
            if layer is None:
                raise ValueError("Choose a polygon layer for the area.")
            return _extent_text(layer.boundingBoxOfSelected() if layer.selectedFeatureCount() else layer.extent(),
                                layer.crs()), layer
        if self.area_drawn.isChecked():
            if self.drawn_extent is None or self.drawn_extent.isEmpty():
                raise ValueError("Draw a rectangle on the map first.")
            return _extent_text(self.drawn_extent, self.drawn_crs), None
        settings = self.canvas.mapSettings()
        return _extent_text(settings.visibleExtent(), settings.destinationCrs()), None

    # ------------------------------------------------------------------ search
    def search(self) -> None:
        """searchscenes then screenscenes, each in a background task."""
        try:
            aoi, polygons = self.area()
        except ValueError as exc:
            self.status.setText(str(exc))
            return
        if not self.url.text().strip():
            self.status.setText("Give the STAC API URL.")
            return
        if self.start.date() > self.end.date():
            self.status.setText("The end date is before the start date.")
            return
        if not self.packages_ready("cloudprob:searchscenes", "cloudprob:screenscenes"):
            return
        self.save_settings()
        self.aoi, self.polygons = aoi, polygons
        self.scenes_path = QgsProcessingUtils.generateTempFilename("scenes.gpkg")
        params = {
            "STAC_URL": self.url.text().strip(), "COLLECTION": self.collection.text().strip(), "AOI": aoi,
            "START_DATE": self.start.date().toString("yyyy-MM-dd"), "END_DATE": self.end.date().toString("yyyy-MM-dd"),
            "MAX_SCENE_CLOUD": self.max_scene_cloud.value(), "MAX_ITEMS": 0, "OUTPUT": self.scenes_path,
        }
        self.table.setRowCount(0)
        self.rows, self.all_rows = [], []
        self.chart.plot([], [])
        self._run("cloudprob:searchscenes", params, self._searched, "Searching the catalogue…", 0, 30)

    def packages_ready(self, *algorithm_ids: str) -> bool:
        """False, with the algorithm's sentence and an *Install…* button, when a package is missing."""
        for algorithm_id in algorithm_ids:
            algorithm = QgsApplication.processingRegistry().algorithmById(algorithm_id)
            ok, message = algorithm.canExecute() if algorithm is not None else (True, "")
            if not ok:
                from ..processing_provider.dependencies import missing
                from .install_dialog import offer_install

                self.status.setText(message)
                absent = missing(*algorithm.required_modules())
                self.packages_message = offer_install(self.iface.messageBar(), message, absent, self)
                return False
        return True

    def _run(self, algorithm: str, params: dict, done, message: str, low: int, high: int) -> None:
        alg = QgsApplication.processingRegistry().createAlgorithmById(algorithm)
        self.context = QgsProcessingContext()
        self.context.setProject(QgsProject.instance())
        self.feedback = QgsProcessingFeedback()
        self.feedback.progressChanged.connect(lambda p: self.progress.setValue(int(low + (high - low) * p / 100)))
        self.task = QgsProcessingAlgRunnerTask(alg, params, self.context, self.feedback)
        self.task.executed.connect(done)
        self.status.setText(message)
        self.search_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        QgsApplication.taskManager().addTask(self.task)

    def _searched(self, ok: bool, results: dict) -> None:
        if not ok or self.feedback.isCanceled():
            self._stopped(self._failure("The search"))
            return
        # every acquisition screened (the chart shows them all); the thresholds filter here
        screen = {
            "SCENES": self.scenes_path, "AOI": self.aoi, "MAX_AOI_CLOUD": 100.0, "MIN_AOI_VALID": 0.0,
            "CONCURRENCY": self.concurrency.value(),
            "OUTPUT": QgsProcessingUtils.generateTempFilename("screened.gpkg"),
        }
        if self.polygons is not None:
            screen["AOI_LAYER"] = self.polygons.source() if not self.polygons.selectedFeatureCount() else \
                _selected_copy(self.polygons)
        self.screened_path = screen["OUTPUT"]
        self._run("cloudprob:screenscenes", screen, self._screened, "Reading the area's window of each scene…", 30, 100)

    def _screened(self, ok: bool, results: dict) -> None:
        if not ok or self.feedback.isCanceled():
            self._stopped(self._failure("The screening"))
            return
        layer = QgsVectorLayer(self.screened_path, "Scenes screened over the area", "ogr")
        layer.loadNamedStyle(str(STYLES / "screened_scenes.qml"))
        if self.screened_layer is not None and self.screened_layer.id() in QgsProject.instance().mapLayers():
            QgsProject.instance().removeMapLayer(self.screened_layer.id())
        QgsProject.instance().addMapLayer(layer)
        self.screened_layer = layer
        self.fill(layer)
        self.progress.setValue(100)
        self._stopped(self._summary(), True)

    def _summary(self) -> str:
        return (f"{len(self.rows)} of {len(self.all_rows)} acquisitions with at most {self.max_area_cloud.value():g} % "
                f"cloud and at least {self.min_valid.value():g} % valid data in the area.")

    def _failure(self, what: str) -> str:
        if self.feedback is not None and self.feedback.isCanceled():
            return f"{what} was cancelled."
        log = self.feedback.textLog().strip().splitlines() if self.feedback is not None else []
        errors = [line for line in log if line and not line.startswith(("Searching", "Screening", "Page "))]
        return f"{what} failed: {errors[-1] if errors else 'see the log'}"

    def _stopped(self, message: str, ok: bool = False) -> None:
        self.status.setText(message)
        self.search_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.task = None
        self.finished.emit(ok)

    def cancel(self) -> None:
        if self.feedback is not None:
            self.feedback.cancel()
        if self.task is not None:
            self.task.cancel()
        self.status.setText("Cancelling…")

    # ------------------------------------------------------------------ results
    def fill(self, layer: QgsVectorLayer) -> None:
        """The table (the acquisitions the thresholds keep) and the chart (all of them, the kept
        ones highlighted) from a screened-scenes layer."""
        self.all_rows = []
        for f in layer.getFeatures(QgsFeatureRequest().addOrderBy("datetime")):
            self.all_rows.append({
                "fid": f.id(), "date": f["datetime"].toString("yyyy-MM-dd") if f["datetime"] else "",
                "platform": f["platform"], "tiles": _text(f["mgrs_tiles"]), "scene": _number(f["scene_cloud"]),
                "area": _number(f["aoi_cloud_pct"]), "valid": _number(f["aoi_valid_pct"]),
                "unreadable": _text(f["aoi_status"]).startswith("read error"), "n_products": f["n_products"],
                "item_ids": _text(f["item_ids"]), "stac_items": f["stac_items"],
            })
        self._refilter()

    def _refilter(self, *_) -> None:
        """Apply the thresholds to the screened acquisitions: the table, the chart's highlight and
        the screened layer's filter on the map."""
        from ..core.screening import passes_values

        if not self.all_rows:
            return
        self.rows = [r for r in self.all_rows if passes_values(r["area"], r["valid"], r["unreadable"],
                                                               self.max_area_cloud.value(), self.min_valid.value())]
        self.table.setSortingEnabled(False)
        self.table.clearContents()
        self.table.setRowCount(len(self.rows))
        for r, row in enumerate(self.rows):
            date = QTableWidgetItem(row["date"])
            date.setData(Qt.ItemDataRole.UserRole, r)
            self.table.setItem(r, 0, date)
            self.table.setItem(r, 1, QTableWidgetItem(_short_platform(row["platform"])))
            self.table.setItem(r, 2, QTableWidgetItem(" ".join(t for t in row["tiles"].split(",") if t)))
            self.table.setItem(r, 3, _NumericItem(row["scene"]))
            self.table.setItem(r, 4, _NumericItem(row["area"]))
            self.table.setItem(r, 5, _NumericItem(row["valid"]))
            products = _NumericItem(row["n_products"], "{:.0f}")
            products.setToolTip("\n".join(row["item_ids"].split(",")))
            self.table.setItem(r, 6, products)
        self.table.setSortingEnabled(True)
        self.table.resizeColumnsToContents()
        if self.screened_layer is not None and self.screened_layer.id() in QgsProject.instance().mapLayers():
            fids = ",".join(str(r["fid"]) for r in self.rows) or "-1"
            self.screened_layer.setSubsetString(f"fid IN ({fids})")  # the map shows what the table lists
        self.chart.plot(self.all_rows, self.rows)
        if self.task is None and self.all_rows:
            self.status.setText(self._summary())

    def selected_row(self) -> dict | None:
        items = self.table.selectedItems()
        if not items:
            return None
        return self.rows[self.table.item(items[0].row(), 0).data(Qt.ItemDataRole.UserRole)]

    def select_row(self, index: int) -> None:
        """Select the table row of ``self.rows[index]`` (the chart calls this on a click)."""
        for r in range(self.table.rowCount()):
            if self.table.item(r, 0).data(Qt.ItemDataRole.UserRole) == index:
                self.table.selectRow(r)
                return

    def _selection_changed(self) -> None:
        row = self.selected_row()
        if row is None:
            return
        self._highlight_footprint(row["fid"])
        self.chart.highlight(self.rows.index(row))

    def _highlight_footprint(self, fid: int) -> None:
        """Outline the acquisition's footprint on the map (a selection would fill it opaque)."""
        from qgis.gui import QgsHighlight
        from qgis.PyQt.QtGui import QColor

        if self.highlight is not None:
            self.highlight.hide()
            self.canvas.scene().removeItem(self.highlight)
            self.highlight = None
        if self.screened_layer is None:
            return
        feature = self.screened_layer.getFeature(fid)
        if not feature.hasGeometry():
            return
        self.highlight = QgsHighlight(self.canvas, feature.geometry(), self.screened_layer)
        self.highlight.setColor(QColor(215, 48, 31))
        self.highlight.setFillColor(QColor(215, 48, 31, 25))
        self.highlight.setWidth(3)
        self.highlight.show()
        self.highlighted_fid = fid

    def add_selected_scene(self) -> list:
        """Every product of the selected acquisition on the map, in one layer group: each
        product's true colour (visual, or red/green/blue) above its SCL (class palette). A
        reprocessed duplicate gives way to the newest processing baseline; split datastrips and
        neighbouring tiles are all added, so the layers cover what the acquisition covers."""
        row = self.selected_row()
        if row is None:
            self.status.setText("Select an acquisition in the table first.")
            return []
        import json

        from ..core.reading import ReadError, RefusedAsset, layer_source
        from ..core.screening import acquisition
        from ..core.stac import normalise_item

        summary = acquisition([normalise_item(item) for item in json.loads(row["stac_items"])])
        project = QgsProject.instance()
        first = summary.distinct[0]
        orbit = f" R{first.relative_orbit:03d}" if first.relative_orbit else ""
        root = project.layerTreeRoot()
        index = 0  # below the screened footprints, so their outlines stay visible
        node = root.findLayer(self.screened_layer.id()) if self.screened_layer is not None else None
        if node is not None and node.parent() is root:
            index = root.children().index(node) + 1
        group = root.insertGroup(
            index, f"{row['date']} {_short_platform(first.platform)}{orbit}: {len(summary.distinct)} products")
        colour_group = group.addGroup("True colour")
        scl_group = group.addGroup("Scene classification (SCL)")
        added, refused = [], []

        def source(href):
            """The layer's GDAL path, checked and signed as every read is; None (and said) when refused."""
            try:
                return layer_source(href)
            except (RefusedAsset, ReadError) as exc:
                refused.append(str(exc))
                return None

        for scene in summary.distinct:
            scl = scene.asset_href("scl")
            path = source(scl) if scl else None
            if path:
                layer = QgsRasterLayer(path, f"{scene.item_id} SCL")
                if layer.isValid():
                    layer.loadNamedStyle(str(STYLES / "scl.qml"))
                    project.addMapLayer(layer, False)
                    scl_group.addLayer(layer)
                    added.append(layer)
            layer = None
            if scene.asset_href("visual"):
                path = source(scene.asset_href("visual"))
                layer = QgsRasterLayer(path, f"{scene.item_id} true colour") if path else None
            elif all(scene.asset_href(b) for b in ("red", "green", "blue")):
                paths = [source(scene.asset_href(b)) for b in ("red", "green", "blue")]
                layer = _rgb_layer(scene, paths) if all(paths) else None
            if layer is not None and layer.isValid():
                project.addMapLayer(layer, False)
                colour_group.addLayer(layer)
                added.append(layer)
        for child in (colour_group, scl_group):
            if not child.children():
                group.removeChildNode(child)
        def fold() -> None:  # the products listed, their bands and classes folded
            for node in group.findLayers():
                node.setExpanded(False)

        fold()
        QTimer.singleShot(0, fold)  # again once the layer tree view has shown the new layers
        self.added_group = group
        self.status.setText(f"Added {len(added)} layers of the acquisition {summary.datatake_id} "
                            f"({len(summary.distinct)} products: {', '.join(summary.mgrs_tiles)})."
                            + (f" Not opened: {refused[0]}" + (f" (and {len(refused) - 1} more)" if len(refused) > 1
                                                                else "") if refused else ""))
        for message in refused:
            QgsMessageLog.logMessage(f"Not opened: {message}", "Cloud probability", Qgis.MessageLevel.Warning)
        self.zoom_to_area()
        return added

    def zoom_to_area(self) -> None:
        try:
            aoi, _ = self.area()
        except ValueError:
            return
        extent, crs = _parse_extent(aoi)
        dest = self.canvas.mapSettings().destinationCrs()
        if crs.isValid() and dest.isValid() and crs != dest:
            extent = QgsCoordinateTransform(crs, dest, QgsProject.instance()).transformBoundingBox(extent)
        self.canvas.setExtent(extent)
        self.canvas.refresh()

    def model_parameters(self) -> dict:
        """The annual model's parameters pre-filled from the dock."""
        aoi, polygons = self.area()
        params = {"STAC_URL": self.url.text().strip(), "COLLECTION": self.collection.text().strip(), "AOI": aoi,
                  "START_DATE": self.start.date().toString("yyyy-MM-dd"), "END_DATE": self.end.date().toString("yyyy-MM-dd")}
        if polygons is not None:
            params["ZONES"] = polygons.source()
        return params

    def open_annual_model(self) -> None:
        from qgis import processing

        try:
            params = self.model_parameters()
        except ValueError as exc:
            self.status.setText(str(exc))
            return
        if not self.packages_ready("cloudprob:annualcloudprobability"):
            return
        processing.execAlgorithmDialog("cloudprob:annualcloudprobability", params)


def _row(*widgets) -> QWidget:
    """Widgets side by side in one form row."""
    holder = QWidget()
    row = QHBoxLayout(holder)
    row.setContentsMargins(0, 0, 0, 0)
    for widget in widgets:
        row.addWidget(widget, 0 if isinstance(widget, QLabel) else 1)
    return holder


def _text(value) -> str:
    """A text attribute, '' for NULL (a null QVariant in QGIS 3, None in QGIS 4)."""
    return value if isinstance(value, str) else ""


def _number(value) -> float | None:
    """A numeric attribute, None for NULL."""
    return float(value) if isinstance(value, (int, float)) else None


def _short_platform(platform: str | None) -> str:
    """``sentinel-2b`` → ``S2B`` (the table stays narrow)."""
    text = (platform or "").lower()
    return "S2" + text[-1].upper() if text.startswith("sentinel-2") and len(text) == 11 else (platform or "")


def _extent_text(extent: QgsRectangle, crs) -> str:
    return f"{extent.xMinimum()},{extent.xMaximum()},{extent.yMinimum()},{extent.yMaximum()} [{crs.authid()}]"


def _parse_extent(text: str):
    numbers, _, crs = text.partition(" [")
    xmin, xmax, ymin, ymax = (float(v) for v in numbers.split(","))
    return QgsRectangle(xmin, ymin, xmax, ymax), QgsCoordinateReferenceSystem(crs.rstrip("]"))


def _selected_copy(layer: QgsVectorLayer) -> str:
    """The selected polygons written to a temporary GeoPackage (tasks run in another thread)."""
    from qgis import processing

    path = QgsProcessingUtils.generateTempFilename("area.gpkg")
    processing.run("native:saveselectedfeatures", {"INPUT": layer, "OUTPUT": path})
    return path


def _rgb_layer(scene, sources: list[str]) -> QgsRasterLayer:
    """Red, green and blue COGs (their checked GDAL paths) stacked in a VRT, stretched over 0–0.25 reflectance."""
    from osgeo import gdal
    from qgis.core import QgsContrastEnhancement, QgsMultiBandColorRenderer

    path = QgsProcessingUtils.generateTempFilename(f"{scene.item_id}_rgb.vrt")
    gdal.BuildVRT(path, sources, separate=True)
    layer = QgsRasterLayer(path, f"{scene.item_id} true colour")
    if layer.isValid():
        renderer = QgsMultiBandColorRenderer(layer.dataProvider(), 1, 2, 3)
        from ..core.composite import boa_offset

        offset = -boa_offset(scene)  # digital numbers still carry the +1000 of baseline 04.00+
        for band, setter in ((1, renderer.setRedContrastEnhancement), (2, renderer.setGreenContrastEnhancement),
                             (3, renderer.setBlueContrastEnhancement)):
            enhancement = QgsContrastEnhancement(layer.dataProvider().dataType(band))
            enhancement.setContrastEnhancementAlgorithm(
                QgsContrastEnhancement.ContrastEnhancementAlgorithm.StretchToMinimumMaximum)
            enhancement.setMinimumValue(offset)
            enhancement.setMaximumValue(offset + 2500)
            setter(enhancement)
        layer.setRenderer(renderer)
    return layer


class _Chart(QWidget):
    """The area's cloud share (%) of every screened acquisition over time (matplotlib on its Qt
    canvas, never pyplot): the acquisitions the thresholds keep in blue, the others grey, the
    cloud threshold dashed; a click selects the nearest kept acquisition in the table.

    Margins are fixed in pixels and set on every resize (tight or constrained layouts warn, and
    QGIS logs every warning with a traceback, when a dock is small); nothing is drawn while the
    canvas is too small to hold the axes.
    """

    MARGINS = dict(left=58, right=12, top=10, bottom=30)  # pixels: the y label and the dates fit
    MIN_HEIGHT = 220

    def __init__(self, dock: CloudProbabilityDock):
        super().__init__()
        self.dock = dock
        self.dates: list = []
        self.marker = None
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        try:
            try:  # matplotlib ≥ 3.5: the Qt binding QGIS already loaded (Qt5 or Qt6)
                from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
            except ImportError:
                from matplotlib.backends.backend_qt5agg import FigureCanvasQTAgg
            from matplotlib.figure import Figure
        except ImportError:  # matplotlib is optional: the table says it all
            self.canvas = None
            layout.addWidget(QLabel("(install matplotlib for the chart)"))
            return
        self.figure = Figure(figsize=(4, 2.4))
        self.axes = self.figure.add_subplot(111)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(self.MIN_HEIGHT)
        self.canvas.mpl_connect("button_press_event", self._clicked)
        self.canvas.mpl_connect("resize_event", lambda event: self._margins())
        layout.addWidget(self.canvas)
        self.setMinimumHeight(self.MIN_HEIGHT)
        self._margins()

    def _margins(self) -> None:
        width, height = self.canvas.width(), self.canvas.height()
        m = self.MARGINS
        if width <= m["left"] + m["right"] + 10 or height <= m["top"] + m["bottom"] + 10:
            return  # hidden or squeezed: keep the last layout
        self.figure.subplots_adjust(left=m["left"] / width, right=1 - m["right"] / width,
                                    bottom=m["bottom"] / height, top=1 - m["top"] / height)

    def plot(self, rows: list[dict], kept: list[dict] | None = None) -> None:
        """Every acquisition of ``rows``; those of ``kept`` (the table's, in its order) highlighted."""
        if self.canvas is None:
            return
        from datetime import date

        from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

        kept = rows if kept is None else kept
        kept_ids = {id(r) for r in kept}
        self.axes.clear()
        self.dates = [date.fromisoformat(r["date"]) if r["date"] else None for r in kept]
        others = [(date.fromisoformat(r["date"]), r["area"]) for r in rows
                  if id(r) not in kept_ids and r["date"] and r["area"] is not None]
        shown = [(d, r["area"]) for d, r in zip(self.dates, kept) if d is not None and r["area"] is not None]
        if others:
            xs, ys = zip(*others)
            self.axes.plot(xs, ys, "o", markersize=3.5, color="#b0b0b0", label="other acquisitions")
        if shown:
            xs, ys = zip(*shown)
            self.axes.plot(xs, ys, "o", markersize=4.5, color="#2b5f8a", label="kept by the thresholds")
        if others or shown:
            self.axes.axhline(self.dock.max_area_cloud.value(), color="#2b5f8a", linewidth=0.8, linestyle="--")
            locator = AutoDateLocator(minticks=3, maxticks=7)
            self.axes.xaxis.set_major_locator(locator)
            self.axes.xaxis.set_major_formatter(ConciseDateFormatter(locator))
        else:
            self.axes.set_xticks([])
        self.axes.set_ylabel("cloud in the area (%)")
        self.axes.set_ylim(-3, 103)
        self.axes.tick_params(labelsize=8)
        self.axes.grid(axis="y", color="#e0e0e0", linewidth=0.6)
        self.marker = None
        self._margins()
        self.canvas.draw_idle()

    def highlight(self, index: int) -> None:
        if self.canvas is None or index >= len(self.dates) or self.dates[index] is None:
            return
        if self.marker is not None:
            self.marker.remove()
        value = self.dock.rows[index]["area"]
        (self.marker,) = self.axes.plot([self.dates[index]], [value if value is not None else 0], "o", markersize=9,
                                        markerfacecolor="none", markeredgecolor="#d7301f", markeredgewidth=2)
        self.canvas.draw_idle()

    def _clicked(self, event) -> None:
        if event.xdata is None or not any(d is not None for d in self.dates):
            return
        from matplotlib.dates import date2num

        distances = [abs(date2num(d) - event.xdata) if d is not None else float("inf") for d in self.dates]
        self.dock.select_row(distances.index(min(distances)))
