"""`make screenshot`: the real QGIS window under Xvfb, a search on the sample archive through
the "Cloud probability" dock, and PNG screenshots of the window, the dock with its results and
chart, and the map with the acquisition and the drawn area.

    python scripts/screenshot.py            # into .build/screenshots/ (tracked files untouched)
    python scripts/screenshot.py --update   # into docs/screenshots/ (make screenshot UPDATE=1)

QGIS runs with a private profile under .build/qgis-desktop (the plugin enabled there) and a
startup script (qgis --code) that drives the dock as a user would. Every message QGIS logs while
it runs is written beside the screenshots (qgis_messages.txt); a Python warning or error there
fails the run. xvfb-run, its Xvfb and QGIS run in a process group of their own, which is ended
when the run ends, whatever happened.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRACKED = ROOT / "docs" / "screenshots"
BUILD_OUT = ROOT / ".build" / "screenshots"
PROFILE = ROOT / ".build" / "qgis-desktop"
SCREEN = (1920, 1200)
NAMES = ("qgis_window.png", "dock_results.png", "map_scene_footprints.png")

STARTUP = r'''
import json
from qgis.utils import plugins, iface
from qgis.core import (QgsApplication, QgsCoordinateReferenceSystem, QgsDatumTransform, QgsProject, QgsRectangle,
                       QgsVectorLayer)
from qgis.PyQt.QtCore import QDate, Qt, QTimer

CONFIG = json.loads({config!r})
MESSAGES = []


def record(message, tag, level):
    MESSAGES.append({{"tag": tag, "level": int(level), "message": message}})


QgsApplication.messageLog().messageReceived.connect(record)
window = iface.mainWindow()
window.setGeometry(0, 0, CONFIG["screen"][0], CONFIG["screen"][1])
plugin = plugins["cloud_probability"]
dock = plugin.dock
dock.show()
dock.raise_()
window.resizeDocks([dock], [CONFIG["dock_width"]], Qt.Orientation.Horizontal)
dock.catalogue.setCurrentIndex(2)
dock.url.setText(CONFIG["stac_url"])
dock.collection.setText("sentinel-2-c1-l2a")
dock.start.setDate(QDate(2024, 1, 1))
dock.end.setDate(QDate(2024, 12, 31))
project = QgsProject.instance()
# QGIS prefers the OSTN15 grid between the British National Grid and WGS 84 / UTM; without the grid
# installed it warns on a yellow bar. The project names the best operation this PROJ can run instead.
context = project.transformContext()
for other in ("EPSG:32630", "EPSG:32631", "EPSG:4326"):
    for a, b in (("EPSG:27700", other), (other, "EPSG:27700")):
        source, target = QgsCoordinateReferenceSystem(a), QgsCoordinateReferenceSystem(b)
        usable = [op for op in QgsDatumTransform.operations(source, target) if op.isAvailable]
        if usable:
            context.addCoordinateOperation(source, target, usable[0].proj, False)
project.setTransformContext(context)
project.setCrs(QgsCoordinateReferenceSystem("EPSG:27700"))
zones = QgsVectorLayer(CONFIG["zones"], "Small areas", "ogr")
project.addMapLayer(zones)
symbol = zones.renderer().symbol()
symbol.setColor(symbol.color().fromRgb(0, 0, 0, 0))
symbol.symbolLayer(0).setStrokeColor(symbol.color().fromRgb(90, 90, 90, 140))
x0, y0, x1, y1 = CONFIG["area"]
iface.mapCanvas().setExtent(QgsRectangle(x0 - 1500, y0 - 1500, x1 + 1500, y1 + 1500))
dock.set_drawn_extent(QgsRectangle(x0, y0, x1, y1), QgsCoordinateReferenceSystem("EPSG:27700"))
dock.max_area_cloud.setValue(20.0)
dock.min_valid.setValue(90.0)


def finish(failed=None):
    with open(CONFIG["out"] + "/qgis_messages.json", "w") as fh:
        json.dump(MESSAGES, fh, indent=1)
    open(CONFIG["out"] + ("/failed" if failed else "/done"), "w").write(failed or "ok")
    QTimer.singleShot(500, QgsApplication.instance().quit)


def shoot():
    window.grab().save(CONFIG["out"] + "/qgis_window.png")
    dock.grab().save(CONFIG["out"] + "/dock_results.png")
    iface.mapCanvas().grab().save(CONFIG["out"] + "/map_scene_footprints.png")  # with the outlines drawn on it
    finish()


def done(ok):
    if not ok:
        finish(dock.status.text() or "the search failed")
        return
    dock.table.sortItems(4)
    dock.table.selectRow(0)
    dock.add_selected_scene()
    iface.mapCanvas().setExtent(QgsRectangle(x0 - 900, y0 - 900, x1 + 900, y1 + 900))
    iface.mapCanvas().refresh()
    QTimer.singleShot(8000, shoot)


dock.finished.connect(done)
QTimer.singleShot(3000, dock.search)
'''


def _end_group(proc: subprocess.Popen) -> None:
    """End xvfb-run, its Xvfb and QGIS: the process group this script started, nothing else."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)  # anyone of the group left?
            except ProcessLookupError:
                proc.wait()
                return
            proc.poll()
            time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Screenshots of QGIS with the dock after a search on the sample archive.")
    parser.add_argument("--update", action="store_true", help=f"write into {TRACKED.relative_to(ROOT)} (the README's)")
    parser.add_argument("--out", type=Path, help=f"folder to write into (default {BUILD_OUT.relative_to(ROOT)})")
    args = parser.parse_args(argv)
    out = args.out or (TRACKED if args.update else BUILD_OUT)

    from devpaths import ensure_plugin_importable

    ensure_plugin_importable()
    import servers
    from cloud_probability.sampledata.sample_archive import SampleSpec, generate

    archive = generate(ROOT / ".build" / "sample-small", SampleSpec.small())
    out.mkdir(parents=True, exist_ok=True)
    for old in ("done", "failed", "qgis_messages.json"):
        if (out / old).exists():
            (out / old).unlink()
    ini = PROFILE / "profiles" / "default" / "QGIS" / "QGIS3.ini"
    ini.parent.mkdir(parents=True, exist_ok=True)
    ini.write_text("[PythonPlugins]\ncloud_probability=true\n\n[qgis]\nshowTips322=false\ncheckVersion=false\n"
                   "allowVersionCheck=false\n\n[UI]\nUI\\hidePanels=false\n")
    gx, gy = 538_900, 177_600
    site = next((ROOT / ".venv" / "lib").glob("python3*/site-packages"))
    log = ""
    with servers.SampleServers(archive, ROOT / ".build" / "screenshot-servers") as running:
        config = json.dumps({"stac_url": running.stac.url, "area": [gx - 1200, gy - 1200, gx + 1200, gy + 1200],
                             "zones": f"{archive / 'zones' / 'small_areas.gpkg'}|layername=small_areas",
                             "out": str(out),
                             "screen": list(SCREEN), "dock_width": 800})
        startup = ROOT / ".build" / "screenshot_startup.py"
        startup.write_text(STARTUP.format(config=config))
        env = dict(os.environ, QGIS_PLUGINPATH=str(ROOT / ".build" / "plugins"),
                   PYTHONPATH=f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", XDG_RUNTIME_DIR=str(ROOT / ".build" / "runtime"))
        env.pop("QT_QPA_PLATFORM", None)  # a real window on the virtual X screen
        cmd = ["xvfb-run", "-a", "-s", f"-screen 0 {SCREEN[0]}x{SCREEN[1]}x24", "qgis", "--nologo", "--profiles-path",
               str(PROFILE), "--code", str(startup)]
        # a process group of its own: xvfb-run, the Xvfb it starts and QGIS all end with it
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline and proc.poll() is None:
                if (out / "done").exists() or (out / "failed").exists():
                    break
                time.sleep(1)
            try:
                proc.wait(10)  # QGIS quits by itself once the screenshots are written
            except subprocess.TimeoutExpired:
                pass
        finally:
            _end_group(proc)
            log = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    if (out / "failed").exists():
        print(f"the search failed in QGIS: {(out / 'failed').read_text()}", file=sys.stderr)
        return 1
    if not (out / "done").exists():
        print(log[-4000:], file=sys.stderr)
        print("QGIS did not produce the screenshots in time", file=sys.stderr)
        return 1
    (out / "done").unlink()
    messages = json.loads((out / "qgis_messages.json").read_text())
    (out / "qgis_messages.json").unlink()
    python = [m for m in messages if m["tag"].startswith("Python")]
    with open(BUILD_OUT.parent / "screenshot_messages.txt" if args.update else out / "qgis_messages.txt", "w") as fh:
        for m in messages:
            fh.write(f"[{m['tag']}] {m['message']}\n")
    for name in NAMES:
        print(out / name)
    if python:
        print(f"QGIS logged {len(python)} Python warnings or errors while it ran:", file=sys.stderr)
        for m in python[:5]:
            print(f"[{m['tag']}] {m['message'][:2000]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
