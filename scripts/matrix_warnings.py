"""Warnings of a `make test-matrix` run, and whose they are.

As a pytest plugin (scripts/test_matrix.sh copies it into the chroot's venv and loads it with
``-p cloudprob_matrix_warnings``): every warning pytest records, one JSON line each, appended to the
file named by $MATRIX_WARNINGS_LOG. Nothing is filtered or hidden: pytest's own summary is unchanged.

As a script (``matrix_warnings.py WARNINGS.jsonl CLONE_ROOT``): the count, split by the file a
warning is attributed to — the plugin's own (core/, processing_provider/, ui/, plugin.py), the
tests', and QGIS's or other libraries' — with each distinct warning listed once and its count.
"""
from __future__ import annotations

import json
import os
import sys
from collections import Counter

PLUGIN_PARTS = ("core/", "processing_provider/", "ui/", "plugin.py")


def pytest_warning_recorded(warning_message, when, nodeid, location):
    path = os.environ.get("MATRIX_WARNINGS_LOG")
    if not path:
        return
    record = {"when": when, "nodeid": nodeid, "category": warning_message.category.__name__,
              "message": str(warning_message.message).splitlines()[0] if str(warning_message.message) else "",
              "filename": str(warning_message.filename), "lineno": warning_message.lineno}
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def owner(filename: str, root: str) -> str:
    root = root.rstrip("/") + "/"
    if filename.startswith(root):
        rel = filename[len(root):]
        # the tests import the plugin through the link .build/plugins/cloud_probability (scripts/devpaths.py)
        rel = rel.removeprefix(".build/plugins/cloud_probability/")
        if rel == "plugin.py" or rel.startswith(PLUGIN_PARTS):
            return "plugin"
        if rel.startswith("tests/"):
            return "tests"
        if not rel.startswith(".venv/"):
            return "repository (scripts, sampledata…)"
    return "QGIS and other libraries"


def main(path: str, root: str) -> int:
    records = []
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            records = [json.loads(line) for line in fh if line.strip()]
    by_owner = Counter(owner(r["filename"], root) for r in records)
    print(f"   warnings: {len(records)} in all; " + (", ".join(f"{who}: {n}" for who, n in sorted(by_owner.items()))
                                                     or "none"))
    distinct = Counter((owner(r["filename"], root), r["filename"], r["lineno"], r["category"], r["message"])
                       for r in records)
    for (who, filename, lineno, category, message), n in sorted(distinct.items()):
        print(f"     [{who}] {n}x {filename}:{lineno}: {category}: {message[:200]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
