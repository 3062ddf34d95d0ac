"""SIGTERM and Ctrl-C while an algorithm runs on the main thread (``qgis_process``, a script).

Without this a SIGTERM ended ``qgis_process`` at once, and the ``*.part-PID`` files of the
outputs being written stayed beside them for good (the next run, naming its outputs
differently, never saw them); Ctrl-C did nothing at all, since ``qgis_process`` 3.22 hears
SIGINT only through its event loop, which does not turn while an algorithm runs. Here the
first signal cancels the run, so each stage stops as on Cancel and removes its partial files
(their ``finally`` blocks), and the algorithm then fails with a sentence naming the signal; a
second signal ends the process at once, as without this. In the QGIS window algorithms run in
worker threads, where Python cannot take signals: nothing changes there.
"""
from __future__ import annotations

import os
import signal
import threading
from functools import wraps

from qgis.core import QgsProcessingException

NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "Ctrl-C (SIGINT)"}
_active: list = []  # the feedbacks of the runs in progress on the main thread, outermost first
_received: list[int] = []
_previous: dict = {}


def _handler(signum, frame) -> None:
    if _received:  # asked twice: end now, as the signal would have without us
        _restore()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    _received.append(signum)
    for feedback in list(_active):
        feedback.pushWarning(f"{NAMES[signum]} received: stopping as on Cancel, partial files removed (send it "
                             "again to end at once).")
        feedback.cancel()


def _restore() -> None:
    for number, previous in list(_previous.items()):
        signal.signal(number, previous if previous is not None else signal.SIG_DFL)
    _previous.clear()


def stops_on_signals(process):
    """Decorates ``processAlgorithm``: SIGTERM and SIGINT cancel the run (see the module)."""

    @wraps(process)
    def run(self, parameters, context, feedback):
        if feedback is None or threading.current_thread() is not threading.main_thread():
            return process(self, parameters, context, feedback)
        outermost = not _active
        if outermost:
            _received.clear()
            for number in NAMES:
                _previous[number] = signal.signal(number, _handler)
        _active.append(feedback)
        try:
            result = process(self, parameters, context, feedback)
        finally:
            _active.pop()
            if outermost:
                _restore()
        if _received:
            raise QgsProcessingException(
                f"Stopped by {NAMES[_received[0]]}: the run was cancelled and its partial files removed; outputs "
                "finished before the signal are kept.")
        return result

    return run
