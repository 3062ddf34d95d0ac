"""Datetimes as STAC writes them: one parser for items, search answers and token expiries."""
from __future__ import annotations

import re
from datetime import datetime, timezone


def parse_datetime(value: str) -> datetime:
    """Parse a STAC datetime (``Z`` or offset, with or without fraction) into aware UTC."""
    text = value.strip()
    if text.endswith("Z") or text.endswith("z"):
        text = text[:-1] + "+00:00"
    # Python 3.11's fromisoformat accepts any number of fraction digits only from 3.11 on;
    # clip to microseconds anyway so older interpreters in other QGIS builds agree.
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    when = datetime.fromisoformat(text)
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc)
