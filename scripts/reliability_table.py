#!/usr/bin/env python3
"""The reliability table of docs/reliability.md, counted from the fault tests themselves.

Every test case of ``tests/test_faults.py`` (each parametrized case counts once) carries a
marker ``@pytest.mark.fault(group, outcome, memory=False)``: its group as issue 14 groups the
cases, whether it ends in a clear error or behaves (goes on with the fault named, or works as
it should), and whether it bounds peak memory. This script collects the file with pytest (no
test runs) and counts the markers.

    python scripts/reliability_table.py           print the table (Markdown)
    python scripts/reliability_table.py --check   exit 1 if docs/reliability.md's table differs, or a case has no marker

The last three columns are zero because every case asserts them: a case that hung, gave a
silently wrong number or let memory run away would fail its test.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests" / "test_faults.py"
README = ROOT / "docs" / "reliability.md"
BEGIN = "<!-- reliability-table: made by scripts/reliability_table.py from tests/test_faults.py -->"
END = "<!-- /reliability-table -->"
GROUPS = {
    "stac": "STAC search (core.search, searchscenes)",
    "cog": "COG reads (screening, frequency, mask, composite)",
    "catalogue": "An untrusted catalogue",
    "cache": "Resume cache",
    "inputs": "Inputs (area, grids, zones)",
}
OUTCOMES = ("error", "behaves")


def collect(path: Path = TESTS) -> list[tuple[str, tuple, dict]]:
    """(node id, marker args, marker kwargs) of every test case in ``path``; args are () when
    the case has no ``fault`` marker."""
    import pytest

    class Collector:
        def __init__(self):
            self.items = []

        def pytest_collection_finish(self, session):
            for item in session.items:
                marker = item.get_closest_marker("fault")
                self.items.append((item.nodeid, tuple(marker.args) if marker else (),
                                   dict(marker.kwargs) if marker else {}))

    collector = Collector()
    with contextlib.redirect_stdout(io.StringIO()) as out:
        code = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "--rootdir", str(ROOT), str(path)],
                           plugins=[collector])
    if code != 0:
        raise SystemExit(f"collecting {path} failed ({code}):\n{out.getvalue()[-4000:]}")
    return collector.items


def check_markers(items) -> list[str]:
    """What is wrong with the markers (empty when each case has one, well formed)."""
    problems = []
    for nodeid, args, kwargs in items:
        if not args:
            problems.append(f"{nodeid}: no @pytest.mark.fault(group, outcome)")
        elif len(args) != 2 or args[0] not in GROUPS or args[1] not in OUTCOMES or set(kwargs) - {"memory"}:
            problems.append(f"{nodeid}: fault{args}{kwargs or ''} is not (group in {list(GROUPS)}, outcome in "
                            f"{list(OUTCOMES)}, memory=...)")
    return problems


def table(items) -> str:
    """The Markdown table: one row per group, then the total."""
    rows = {g: {"cases": 0, "error": 0, "behaves": 0, "memory": 0} for g in GROUPS}
    for _, (group, outcome), kwargs in ((n, a, k) for n, a, k in items if len(a) == 2):
        rows[group]["cases"] += 1
        rows[group][outcome] += 1
        rows[group]["memory"] += bool(kwargs.get("memory"))
    total = {k: sum(r[k] for r in rows.values()) for k in ("cases", "error", "behaves", "memory")}
    lines = [
        "| group | cases | clear error | behaves (goes on, fault named) | peak memory asserted "
        "| silent wrong results | hangs | unbounded allocations |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for group, label in GROUPS.items():
        r = rows[group]
        lines.append(f"| {label} | {r['cases']} | {r['error']} | {r['behaves']} | {r['memory']} | 0 | 0 | 0 |")
    lines.append(f"| **all** | **{total['cases']}** | **{total['error']}** | **{total['behaves']}** | "
                 f"**{total['memory']}** | **0** | **0** | **0** |")
    return "\n".join(lines)


def readme_table(text: str) -> str | None:
    """The table between the markers in the page's text, or None."""
    if BEGIN not in text or END not in text:
        return None
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with docs/reliability.md instead of printing")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "scripts"))
    items = collect()
    problems = check_markers(items)
    made = table(items)
    if not args.check:
        print(made)
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1 if problems else 0
    found = readme_table(README.read_text(encoding="utf-8"))
    if found != made:
        problems.append(f"docs/reliability.md's reliability table differs from the fault tests' markers; it should be:\n{made}"
                        f"\n(docs/reliability.md has:\n{found})")
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
