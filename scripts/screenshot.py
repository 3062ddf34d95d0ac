"""`make screenshot`: the real QGIS window under Xvfb, a search on the sample archive through
the "Cloud probability" dock, and PNG screenshots of the window, the dock with its results and
the map with the scene and footprints, written to docs/screenshots/.

QGIS runs with a private profile under .build/qgis-desktop (the plugin enabled there) and a
startup script (qgis --code) that drives the dock as a user would.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "screenshots"
PROFILE = ROOT / ".build" / "qgis-desktop"

STARTUP = r'''
import json
from qgis.utils import plugins, iface
from qgis.core import QgsApplication, QgsCoordinateReferenceSystem, QgsProject, QgsRectangle, QgsVectorLayer
from qgis.PyQt.QtCore import QDate, Qt, QTimer

CONFIG = json.loads({config!r})
plugin = plugins["cloud_probability"]
dock = plugin.dock
dock.show()
dock.raise_()
iface.mainWindow().resizeDocks([dock], [640], Qt.Horizontal)
dock.catalogue.setCurrentIndex(2)
dock.url.setText(CONFIG["stac_url"])
dock.start.setDate(QDate(2024, 1, 1))
dock.end.setDate(QDate(2024, 12, 31))
x0, y0, x1, y1 = CONFIG["area"]
dock.set_drawn_extent(QgsRectangle(x0, y0, x1, y1), QgsCoordinateReferenceSystem("EPSG:27700"))
dock.max_area_cloud.setValue(20.0)
dock.min_valid.setValue(90.0)
zones = QgsVectorLayer(CONFIG["zones"], "Small areas", "ogr")
QgsProject.instance().addMapLayer(zones)
zones.renderer().symbol().setColor(zones.renderer().symbol().color().fromRgb(0, 0, 0, 0))
QgsProject.instance().setCrs(QgsCoordinateReferenceSystem("EPSG:27700"))

def shoot():
    iface.mainWindow().grab().save(CONFIG["out"] + "/qgis_window.png")
    dock.grab().save(CONFIG["out"] + "/dock_results.png")
    iface.mapCanvas().saveAsImage(CONFIG["out"] + "/map_scene_footprints.png")
    open(CONFIG["out"] + "/done", "w").write("ok")
    QTimer.singleShot(500, QgsApplication.instance().quit)

def done(ok):
    if not ok:
        open(CONFIG["out"] + "/failed", "w").write(dock.status.text())
        QgsApplication.instance().quit()
        return
    dock.table.sortItems(4)
    dock.table.selectRow(0)
    dock.add_selected_scene()
    iface.mapCanvas().setExtent(QgsRectangle(x0 - 600, y0 - 600, x1 + 600, y1 + 600))
    iface.mapCanvas().refresh()
    iface.mainWindow().resizeDocks([dock], [640], Qt.Horizontal)
    QTimer.singleShot(6000, shoot)

dock.finished.connect(done)
QTimer.singleShot(3000, dock.search)
'''


def main() -> int:
    from devpaths import ensure_plugin_importable

    ensure_plugin_importable()
    import servers
    from cloud_probability.sampledata.sample_archive import SampleSpec, generate

    archive = generate(ROOT / ".build" / "sample-small", SampleSpec.small())
    info = json.loads((archive / "archive.json").read_text())
    OUT.mkdir(parents=True, exist_ok=True)
    for old in ("done", "failed"):
        if (OUT / old).exists():
            (OUT / old).unlink()
    ini = PROFILE / "profiles" / "default" / "QGIS" / "QGIS3.ini"
    ini.parent.mkdir(parents=True, exist_ok=True)
    ini.write_text("[PythonPlugins]\ncloud_probability=true\n\n[qgis]\nshowTips322=false\ncheckVersion=false\n"
                   "allowVersionCheck=false\n\n[UI]\nUI\\hidePanels=false\n")
    x0, y0, x1, y1 = info["aoi_27700"]
    gx, gy = 538_900, 177_600
    site = next((ROOT / ".venv" / "lib").glob("python3*/site-packages"))
    with servers.SampleServers(archive, ROOT / ".build" / "screenshot-servers") as running:
        config = json.dumps({"stac_url": running.stac.url, "area": [gx - 1200, gy - 1200, gx + 1200, gy + 1200],
                             "zones": f"{archive / 'zones' / 'small_areas.gpkg'}|layername=small_areas", "out": str(OUT)})
        startup = ROOT / ".build" / "screenshot_startup.py"
        startup.write_text(STARTUP.format(config=config))
        env = dict(os.environ, QGIS_PLUGINPATH=str(ROOT / ".build" / "plugins"),
                   PYTHONPATH=f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", XDG_RUNTIME_DIR=str(ROOT / ".build" / "runtime"))
        env.pop("QT_QPA_PLATFORM", None)  # a real window on the virtual X screen
        cmd = ["xvfb-run", "-a", "-s", "-screen 0 1680x1050x24", "qgis", "--nologo", "--profiles-path", str(PROFILE),
               "--code", str(startup)]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if (OUT / "done").exists() or (OUT / "failed").exists():
                break
            time.sleep(1)
        time.sleep(2)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        log = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    if (OUT / "failed").exists():
        print(f"the search failed in QGIS: {(OUT / 'failed').read_text()}", file=sys.stderr)
        return 1
    if not (OUT / "done").exists():
        print(log[-4000:], file=sys.stderr)
        print("QGIS did not produce the screenshots in time", file=sys.stderr)
        return 1
    (OUT / "done").unlink()
    for name in ("qgis_window.png", "dock_results.png", "map_scene_footprints.png"):
        print(OUT / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
