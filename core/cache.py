"""The frequency stage's resume cache, and the leftovers of runs that died.

Each finished tile of :func:`core.frequency.cloud_frequency` is kept as one ``.npz`` file in a
folder per cache key (the grid and the way of counting) under a root folder, so that a
cancelled or crashed run resumes from its finished tiles. :class:`TileCache` keeps runs apart:

* **unique temporary names**: a tile is written as ``<name>.part-<pid>-<thread>.npz`` and
  renamed into place (one atomic rename), so two runs never write into the same file and a
  reader never sees half a tile;
* **a lock per key**: ``<root>/<key>.lock``, held *shared* by every run using the key for the
  whole of its run. A run removes its tiles at the end only if it can take the lock
  *exclusively*, i.e. when no other run uses the key; otherwise it leaves them to the run
  still going (the last one to finish removes them). A run starting while another removes its
  tiles waits for it (a fraction of a second), Cancel honoured. The operating system releases
  a lock when its process ends, however it ends (``flock`` on POSIX; ``msvcrt.locking`` on
  Windows, where the lock is exclusive only, so runs of one key there take turns), so a run
  killed with ``kill -9`` leaves no stale lock behind;
* **damaged tiles** (a truncated file, a foreign one, one of another shape) are named with the
  cache folder in a warning and computed again, never a failed run;
* **stale partial files**: ``*.part-<pid>…`` files whose process is no longer running (killed
  while writing) are removed by the next run, in the cache folder and beside the outputs
  (:func:`remove_stale_parts`).

Cache folders nobody used for :data:`CACHE_DAYS` days are pruned, unless a run holds them.
"""
from __future__ import annotations

import os
import re
import shutil
import threading
import time
import weakref
from pathlib import Path

from .progress import NullProgress, Progress, check_cancel

CACHE_DAYS = 14  # cache folders untouched this long are pruned: no run resumes from them any more
LOCK_POLL_S = 0.1  # how often a run waiting for the key's lock looks again (and at Cancel)

# what a writer leaves beside its final file: "<final>.part-<pid>[-<thread>][.ext…]" (also .kv-
# and .cog- for the smoothing's and the composite's second temporaries)
_LEFTOVER = re.compile(r"\.(?:part|kv|cog)-(?P<pid>\d+)(?:-\d+)?(?:[.-]\w+)*")


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this computer (when unsure: yes, so nothing of a live
    run is ever removed)."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    if os.name == "nt":
        import ctypes
        from ctypes import wintypes

        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return ctypes.get_last_error() == 5  # access denied: it exists
        try:
            code = wintypes.DWORD()
            if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
                return True
            return code.value == 259  # STILL_ACTIVE
        finally:
            kernel32.CloseHandle(handle)
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    except OSError:
        return True
    return True


def remove_stale_parts(*finals: str | os.PathLike | None) -> list[str]:
    """Remove the partial files that runs killed while writing left beside each of ``finals``
    (``<final>.part-<pid>…``; those of live processes, this one included, are kept). Returns
    the paths removed."""
    removed = []
    for final in finals:
        if not final:
            continue
        folder, name = os.path.split(os.fspath(final))
        removed += _remove_stale(folder or ".", lambda entry, name=name: entry.startswith(name + ".")
                                 and _LEFTOVER.fullmatch(entry[len(name):]))
    return removed


def _remove_stale(folder: str, match) -> list[str]:
    removed = []
    try:
        entries = os.listdir(folder)
    except OSError:
        return removed
    for entry in entries:
        found = match(entry)
        if not found or process_alive(int(found.group("pid"))):
            continue
        path = os.path.join(folder, entry)
        try:
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
            removed.append(path)
        except OSError:
            pass  # gone already (another run cleaned it), or not ours to remove
    return removed


# ---------------------------------------------------------------------------------------------
# the lock of a cache key


class _KeyLock:
    """A lock file, held shared or exclusive through the operating system (released when the
    process ends, however it ends)."""

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None
        self.mode: str | None = None

    def acquire(self, exclusive: bool, wait: bool, progress: Progress, on_wait=None) -> bool:
        """Take the lock; with ``wait`` poll until it is free (Cancel honoured), else give up
        at once. True when held."""
        told = False
        while True:
            if self.fd is None:
                self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if self._try(exclusive):
                if self._still_the_file():
                    self.mode = "exclusive" if exclusive or os.name == "nt" else "shared"
                    return True
                self.release()  # pruned and made anew meanwhile: lock the file that is there now
                continue
            if not wait:
                if self.mode is None:
                    self.release()
                return False
            if not told and on_wait is not None:
                on_wait()
                told = True
            check_cancel(progress)
            time.sleep(LOCK_POLL_S)

    def _try(self, exclusive: bool) -> bool:
        if os.name == "nt":
            import msvcrt

            if self.mode is not None:
                return True  # already held (exclusively: Windows' only kind)
            try:
                os.lseek(self.fd, 0, os.SEEK_SET)
                msvcrt.locking(self.fd, msvcrt.LK_NBLCK, 1)
                return True
            except OSError:
                return False
        import fcntl

        try:
            fcntl.flock(self.fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            # a shared lock that could not become exclusive may be lost (flock converts by
            # releasing first): count it as not held
            self.mode = None
            return False

    def _still_the_file(self) -> bool:
        if os.name == "nt":
            return True  # an open file cannot be removed there
        try:
            on_disk, held = os.stat(self.path), os.fstat(self.fd)
        except OSError:
            return False
        return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)

    def release(self) -> None:
        fd, self.fd, self.mode = self.fd, None, None
        if fd is None:
            return
        try:
            if os.name == "nt":
                import msvcrt

                try:
                    os.lseek(fd, 0, os.SEEK_SET)
                    msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
                except OSError:
                    pass
        finally:
            os.close(fd)  # releases a flock too


def _release_fd(lock: _KeyLock) -> None:
    lock.release()


# ---------------------------------------------------------------------------------------------
# the cache


class TileCache:
    """The cache folder of one key, held (shared) by this run from construction until
    :meth:`finish` or :meth:`release`; see the module's description."""

    def __init__(self, root: str | os.PathLike, key: str, progress: Progress | None = None):
        self.progress = progress or NullProgress()
        self.root = Path(root)
        self.key = key
        self.folder = self.root / key
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = _KeyLock(self.root / f"{key}.lock")
        # the lock goes with this object if a caller loses it without releasing it
        self._finalizer = weakref.finalize(self, _release_fd, self._lock)
        self._lock.acquire(exclusive=False, wait=True, progress=self.progress, on_wait=lambda: self.progress.info(
            f"Another run holds the resume cache {self.folder} (removing its tiles); waiting for it."))
        self.folder.mkdir(exist_ok=True)
        os.utime(self.folder)  # in use: not pruned
        removed = _remove_stale(str(self.folder), _LEFTOVER.search)
        if removed:
            self.progress.info(f"Removed {len(removed)} partial tile(s) left in {self.folder} by a run that ended "
                               "while writing them.")
        prune(self.root, keep=self.key)

    def load(self, path: Path, shape: tuple[int, ...] | None = None) -> int | None:
        """The pixel-observations of a finished tile at ``path``, or None when there is none.
        A damaged tile (truncated, foreign, of another shape than ``shape``) is named in a
        warning and removed, to be computed again."""
        import numpy as np

        if not path.exists():
            return None
        try:
            with np.load(path) as done:
                valid, cloudy = done["valid"], done["cloudy"]  # read whole: their checksums are checked
                if shape is not None and (valid.shape != tuple(shape) or cloudy.shape != tuple(shape)):
                    raise ValueError(f"its counts are {valid.shape}, not {tuple(shape)}")
                return int(done["pixel_obs"])
        except FileNotFoundError:
            return None  # removed meanwhile by a run that can (it had the lock alone): compute it
        except Exception as exc:  # noqa: BLE001 - a damaged tile must never fail the run
            self.progress.warning(
                f"The resume cache {self.folder} holds a damaged tile, {path.name} ({type(exc).__name__}: {exc}); "
                "it is computed again.")
            try:
                path.unlink()
            except OSError:
                pass
            return None

    def save(self, path: Path, arrays: dict, write=None) -> None:
        """Write a finished tile (``write(path, arrays)``, an ``.npz`` that :func:`numpy.load`
        reads; numpy's ``savez_compressed`` by default) under a name of this process and thread,
        then rename it into place: runs of the same inputs never write into the same file."""
        import numpy as np

        tmp = path.with_name(f"{path.stem}.part-{os.getpid()}-{threading.get_ident()}.npz")
        try:
            if write is None:
                np.savez_compressed(tmp, **arrays)
            else:
                write(tmp, arrays)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()

    def finish(self, used) -> bool:
        """The run is done with ``used`` (its tiles' paths): removed if no other run uses this
        key, else left to the runs still going. Releases the lock. True if removed."""
        removed = False
        if self._lock.mode is not None and self._lock.acquire(exclusive=True, wait=False, progress=self.progress):
            for path in set(used):
                Path(path).unlink(missing_ok=True)
            removed = True
            try:
                self.folder.rmdir()  # only if empty: tiles of other scene lists stay for their re-runs
            except OSError:
                self.release()
                return removed
            if os.name != "nt":  # nothing left of the key: its lock file goes too (a run that opened
                self._lock.path.unlink(missing_ok=True)  # it meanwhile sees it is gone and retries)
        self.release()
        if removed and os.name == "nt":
            try:  # closed first (an open file cannot be removed there); a run holding it keeps it
                self._lock.path.unlink()
            except OSError:
                pass
        return removed

    def release(self) -> None:
        """Stop holding the key (idempotent): for a run that ends without :meth:`finish`."""
        self._lock.release()


def prune(root: Path, keep: str | None = None) -> list[Path]:
    """Remove the cache folders under ``root`` nobody touched for :data:`CACHE_DAYS` days and
    no run holds (their lock taken exclusively, without waiting). Returns the folders removed."""
    removed = []
    if not root.is_dir():
        return removed
    old = time.time() - CACHE_DAYS * 86400
    for folder in root.iterdir():
        try:
            if folder.name == keep or not folder.is_dir() or folder.stat().st_mtime >= old:
                continue
        except OSError:
            continue
        lock = _KeyLock(root / f"{folder.name}.lock")
        try:
            if not lock.acquire(exclusive=True, wait=False, progress=NullProgress()):
                continue  # a run is using it, however old it looks
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
            if os.name != "nt":
                lock.path.unlink(missing_ok=True)  # a run that opened it meanwhile sees it is gone
        except OSError:
            pass
        finally:
            lock.release()
    return removed
