"""Where outputs go, checked before any work: a run that would fail at its last step, after an
hour of reading scenes, because a folder is missing or the disk is full, is refused at its start.

Plain paths only; the Processing adapters hand over the destinations users give (a temporary
output, a database URI or a memory layer is not a file here and is not checked).
"""
from __future__ import annotations

import os
import shutil


class OutputError(Exception):
    """An output cannot be written where it is asked for; the message says why and what to do."""


def nearest_existing_folder(path: str) -> str | None:
    """The closest folder above ``path`` (itself included) that exists, or None."""
    folder = os.path.abspath(path)
    while True:
        if os.path.isdir(folder):
            return folder
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent


def check_output_location(path: str, what: str) -> None:
    """Raise :class:`OutputError` unless a file can be written at ``path`` (``what`` names the
    output for the message): its folder exists and is writable, and ``path`` is not a folder.

    Nothing is created: a folder that does not exist is more often a typing error than a wish.
    """
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(path):
        raise OutputError(f"The output '{what}' is asked for at {path}, which is a folder: give a file name in it.")
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        existing = nearest_existing_folder(folder)
        where = f" (the nearest folder that exists is {existing})" if existing else ""
        raise OutputError(
            f"The folder {folder} for the output '{what}' does not exist{where}: create it, or choose another "
            "place for the output. Nothing was run.")
    if not os.access(folder, os.W_OK | os.X_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise OutputError(
            f"The output '{what}' cannot be written at {path}: no permission to write there. Choose another "
            "place for the output. Nothing was run.")


def free_bytes(path: str) -> int:
    """Free bytes for an unprivileged writer on the disk that holds ``path`` (or the closest
    existing folder above it)."""
    folder = nearest_existing_folder(path) or os.getcwd()
    return shutil.disk_usage(folder).free


def disk_of(path: str) -> int:
    """An identifier of the file system that holds ``path`` (or the closest existing folder
    above it): outputs on one disk share its free space."""
    folder = nearest_existing_folder(path) or os.getcwd()
    return os.stat(folder).st_dev
