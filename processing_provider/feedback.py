"""Bridges core's progress protocol and its logging to ``QgsProcessingFeedback``."""
from __future__ import annotations

import logging
from contextlib import contextmanager

from qgis.core import QgsProcessingFeedback


class FeedbackProgress:
    """core.progress.Progress implemented on a QgsProcessingFeedback."""

    def __init__(self, feedback: QgsProcessingFeedback | None):
        self.feedback = feedback or QgsProcessingFeedback()

    def set_progress(self, percent: float) -> None:
        self.feedback.setProgress(float(percent))

    def is_canceled(self) -> bool:
        return self.feedback.isCanceled()

    def info(self, message: str) -> None:
        self.feedback.pushInfo(message)

    def warning(self, message: str) -> None:
        self.feedback.pushWarning(message)


class _FeedbackHandler(logging.Handler):
    def __init__(self, feedback: QgsProcessingFeedback):
        super().__init__(logging.INFO)
        self.feedback = feedback

    def emit(self, record: logging.LogRecord) -> None:
        message = self.format(record)
        if record.levelno >= logging.WARNING:
            self.feedback.pushWarning(message)
        else:
            self.feedback.pushDebugInfo(message)


@contextmanager
def core_logging_to(feedback: QgsProcessingFeedback):
    """Forward the ``cloud_probability`` logger to ``feedback`` while the block runs."""
    logger = logging.getLogger("cloud_probability")
    handler = _FeedbackHandler(feedback)
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
