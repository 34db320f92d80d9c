"""Errors raised by the inference tier. Callers catch `InferenceError`.

The HTTP edge maps them: `InvalidRequest` -> 400, `ContextLengthExceeded` ->
413, `EngineOverloaded` -> 503 with Retry-After, `DeadlineExceeded` -> 504,
`EngineUnavailable` -> 503, `UnknownModel` -> 404, `ModelBusy` -> 409,
`NoRoomForModel` -> 503 with Retry-After (an `EngineOverloaded`).
"""

from __future__ import annotations


class InferenceError(Exception):
    """Base of every error the inference package raises."""


class InvalidRequest(InferenceError):
    """The request cannot be served as given (bad sampling values, bad schema...)."""


class ContextLengthExceeded(InvalidRequest):
    """Prompt plus max_tokens does not fit in the model's context."""


class EngineOverloaded(InferenceError):
    """The waiting queue is full; try again after ``retry_after_s``."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(InferenceError):
    """The request's deadline passed before it could finish."""


class EngineUnavailable(InferenceError):
    """The engine is not running (not started, stopped, or its model failed to load)."""


class UnknownModel(InferenceError):
    """No chat model by that id can be served here."""


class ModelBusy(InferenceError):
    """The model cannot be unloaded: it has requests running, or it is the default one."""


class NoRoomForModel(EngineOverloaded):
    """The model does not fit in the memory budget, even after unloading every idle model."""
