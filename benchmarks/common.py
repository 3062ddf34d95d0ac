"""Shared helpers of the benchmarks: paths, making the plugin importable, printing."""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / ".build"
OUT = ROOT / "bench_out"


def ensure_plugin_importable() -> None:
    """The checkout as package ``cloud_probability`` and scripts/ (loopback servers) on sys.path."""
    if str(ROOT / "scripts") not in sys.path:
        sys.path.insert(0, str(ROOT / "scripts"))
    from devpaths import ensure_plugin_importable as ensure

    ensure()


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def report(name: str, data) -> Path:
    """Write the figures as JSON under bench_out/."""
    OUT.mkdir(exist_ok=True)
    path = OUT / f"{name}.json"
    path.write_text(json.dumps(data, indent=1, default=str))
    return path
