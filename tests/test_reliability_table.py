"""docs/reliability.md's reliability table is what tests/test_faults.py's cases say (their fault markers)."""
from __future__ import annotations

import os
import subprocess
import sys

from conftest import ROOT


def test_readme_reliability_table_matches_the_fault_tests():
    """Collects tests/test_faults.py in another process (nothing runs) and compares the counts
    of its ``@pytest.mark.fault`` markers with the table in docs/reliability.md; a case without a marker, or
    with a malformed one, fails too."""
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "reliability_table.py"), "--check"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT,
                         env=dict(os.environ, QT_QPA_PLATFORM="offscreen"))
    assert run.returncode == 0, run.stderr[-6000:]


def test_the_table_counts_each_case_once_by_its_marker():
    """The counting itself, on cases made up here: parametrized cases count one each, the
    memory flag is counted, and a case without a marker is reported."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import reliability_table as rt

    items = [("t.py::a[1]", ("stac", "error"), {}), ("t.py::a[2]", ("stac", "error"), {"memory": True}),
             ("t.py::b", ("cache", "behaves"), {}), ("t.py::c", (), {}), ("t.py::d", ("dock", "error"), {})]
    assert rt.check_markers(items) == [
        "t.py::c: no @pytest.mark.fault(group, outcome)",
        "t.py::d: fault('dock', 'error') is not (group in ['stac', 'cog', 'catalogue', 'cache', 'inputs'], outcome "
        "in ['error', 'behaves'], memory=...)",
    ]
    rows = rt.table(items[:3]).splitlines()
    assert rows[2] == "| STAC search (core.search, searchscenes) | 2 | 2 | 0 | 1 | 0 | 0 | 0 |"
    assert rows[5] == "| Resume cache | 1 | 0 | 1 | 0 | 0 | 0 | 0 |"
    assert rows[-1] == "| **all** | **3** | **2** | **1** | **1** | **0** | **0** | **0** |"
