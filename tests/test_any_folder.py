"""A clone in a private folder works (issue 22, "Any folder").

Root's home is mode 0700. nginx started by root used to hand requests to workers running as
``nobody``, who cannot enter such a folder: ``make demo`` there stopped at ``cloudprob:cloudmask``
with ``SCL.tif: HTTP 403 Forbidden`` and ``make test`` had ~65 failures. This test clones the
repository's HEAD into a fresh 0700 folder and runs, in that clone, what a user runs: ``make demo``
(which makes the clone's own .venv) and a part of the suite that reads the sample archive through
the loopback servers. Measured on the 2-core machine: the clone's .venv 27 s (pip's cache warm),
``make demo`` 56 s with it, the three test files 40 s.
"""
from __future__ import annotations

import csv
import os
import shutil
import signal
import sqlite3
import subprocess
from pathlib import Path

from conftest import ROOT

# test files that read the sample archive (and a blob) through nginx and rustac
SUITE_PART = ["tests/test_processing_search.py", "tests/test_processing_screen.py", "tests/test_http.py"]


def _environment() -> dict:
    """This environment without what ties a process to this checkout or to the make that runs us."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MAKE", "MFLAGS", "PYTEST_", "VIRTUAL_ENV")) and k != "PYTHONPATH"}
    env["QT_QPA_PLATFORM"] = "offscreen"
    return env


def _run(cmd: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    """``cmd`` in a process group of its own, ended whole if it outlives ``timeout`` seconds."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=_environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"{' '.join(cmd)} did not end within {timeout:.0f} s:\n{out[-4000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")


def test_a_clone_in_a_private_folder_runs_the_demo_and_the_server_tests(tmp_path):
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    home.chmod(0o700)  # whatever the umask
    assert home.stat().st_mode & 0o777 == 0o700
    clone = home / "cloud-probability"
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    try:
        subprocess.run(["git", "clone", "--quiet", "--no-checkout", str(ROOT), str(clone)], check=True,
                       capture_output=True)
        subprocess.run(["git", "-C", str(clone), "checkout", "--quiet", "--detach", head], check=True,
                       capture_output=True)
        assert not (clone / ".venv").exists()

        demo = _run(["make", "demo"], clone, timeout=600)
        assert demo.returncode == 0, demo.stdout[-6000:]
        assert "403" not in demo.stdout, demo.stdout[-6000:]
        assert "Wrote demo_out/small_areas.gpkg and small_areas.csv" in demo.stdout
        # one row per small area of the archive the clone generated
        with sqlite3.connect(clone / ".build" / "sample-small" / "zones" / "small_areas.gpkg") as db:
            zones = db.execute("SELECT count(*) FROM small_areas").fetchone()[0]
        with open(clone / "demo_out" / "small_areas.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert zones > 0 and len(rows) == zones
        assert all(row["probability_mean"] not in ("", None) for row in rows)

        suite = _run([str(clone / ".venv" / "bin" / "python"), "-m", "pytest", "-q",
                      *SUITE_PART], clone, timeout=600)
        last = suite.stdout.strip().splitlines()[-1] if suite.stdout.strip() else ""
        assert suite.returncode == 0, suite.stdout[-6000:]
        assert " passed" in last and "failed" not in last and "error" not in last, last
    finally:
        shutil.rmtree(home, ignore_errors=True)  # the clone's .venv is 340 MB
