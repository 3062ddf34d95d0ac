"""scripts/screenshot.py ends everything it starts: xvfb-run, the Xvfb it launches, and QGIS."""
from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest


def _group(pgid: int) -> dict[int, str]:
    """pid → command name of every live process in the process group ``pgid`` (from /proc)."""
    members = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members[int(entry)] = name
    return members


@pytest.mark.skipif(shutil.which("xvfb-run") is None, reason="needs Debian's xvfb-run")
def test_the_xvfb_it_starts_is_ended():
    import screenshot

    proc = subprocess.Popen(["xvfb-run", "-a", "sleep", "600"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not {"Xvfb", "sleep"} <= set(_group(proc.pid).values()):
            time.sleep(0.1)  # xvfb-run starts its command once Xvfb is up
        assert "Xvfb" in _group(proc.pid).values() and "sleep" in _group(proc.pid).values()
        screenshot._end_group(proc)
        assert _group(proc.pid) == {} and proc.returncode is not None
    finally:
        if _group(proc.pid):
            os.killpg(proc.pid, 9)
