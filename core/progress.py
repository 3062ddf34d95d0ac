"""The callback protocol through which core code reports progress and honours Cancel.

The Processing adapters bridge it to ``QgsProcessingFeedback``; plain Python callers can pass
nothing (:class:`NullProgress`) or their own object with the same four methods.
"""
from __future__ import annotations

import logging
from typing import Protocol, runtime_checkable

log = logging.getLogger("cloud_probability")


class Cancelled(Exception):
    """Raised by core code when the caller asked to stop; nothing half-written is left."""


@runtime_checkable
class Progress(Protocol):
    """What core code needs from its caller."""

    def set_progress(self, percent: float) -> None:
        """Overall progress, 0–100 (percent)."""

    def is_canceled(self) -> bool:
        """True once the user pressed Cancel."""

    def info(self, message: str) -> None:
        """A line for the log."""

    def warning(self, message: str) -> None:
        """A line for the log that the user should notice."""


class NullProgress:
    """Progress sink for callers that do not care; logs through :mod:`logging`."""

    def set_progress(self, percent: float) -> None:  # noqa: D102
        pass

    def is_canceled(self) -> bool:  # noqa: D102
        return False

    def info(self, message: str) -> None:  # noqa: D102
        log.info(message)

    def warning(self, message: str) -> None:  # noqa: D102
        log.warning(message)


def check_cancel(progress: Progress) -> None:
    """Raise :class:`Cancelled` if the caller asked to stop."""
    if progress.is_canceled():
        raise Cancelled("cancelled by the user")


def finished(futures, progress: Progress, interval_s: float = 0.1):
    """Each of ``futures`` as it finishes (as :func:`concurrent.futures.as_completed`), looking
    at Cancel every ``interval_s`` seconds meanwhile, not only when a future finishes: raises
    :class:`Cancelled`. A future is handed over once and not kept (its result can be freed)."""
    import concurrent.futures as cf

    waiting = set(futures)
    while waiting:
        done, waiting = cf.wait(waiting, timeout=interval_s, return_when=cf.FIRST_COMPLETED)
        check_cancel(progress)
        while done:
            yield done.pop()
