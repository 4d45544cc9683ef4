"""Typed errors. Each carries a stable code so the CLI, reports and tests can name the problem."""

from __future__ import annotations


class CtpError(Exception):
    """Base class: a one-line, user-facing problem with a stable code and a hint."""

    code = "CTP_ERROR"

    def __init__(self, message: str, *, hint: str = "", code: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        if code:
            self.code = code

    def one_line(self) -> str:
        text = f"{self.code}: {self.message}"
        return f"{text}; {self.hint}" if self.hint else text


class ConfigError(CtpError):
    code = "CONFIG_INVALID"


class StoreKeyError(CtpError):
    """An object key that could escape the store prefix or is otherwise unusable."""

    code = "STORE_KEY_INVALID"


class StoreNotFound(CtpError):
    code = "STORE_NOT_FOUND"


class AlreadyExists(CtpError):
    """A create-only write found the key taken (model versions are immutable)."""

    code = "STORE_ALREADY_EXISTS"


class IntegrityError(CtpError):
    """Stored bytes do not match the checksum recorded for them."""

    code = "INTEGRITY_MISMATCH"


class DataValidationError(CtpError):
    """The data failed a check that must stop the run before training."""

    code = "DATA_INVALID"


class UnsafeArtifactError(CtpError):
    code = "ARTIFACT_UNSAFE"


class StoreUnavailable(CtpError):
    """The object store kept failing (5xx, SlowDown, broken connections) past the retry budget."""

    code = "STORE_UNAVAILABLE"
