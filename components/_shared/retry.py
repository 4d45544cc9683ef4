"""Retries of store requests: which failures are transient, how often and how long to retry.

One retry layer for the minio client (its own urllib3 retries are switched off, so a budget of
N attempts means N requests, POSTs included), the same budget for pyarrow's S3 filesystem.
When the budget is spent the caller gets StoreUnavailable, never a raw urllib3/minio error.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TypeVar

import tenacity

from components._shared.errors import StoreUnavailable

T = TypeVar("T")
_TRANSIENT_S3_CODES = frozenset(
    {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "ServerError", "OperationAborted"}
)


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6  # requests per operation: survives 5 consecutive transient faults
    base_delay: float = 0.1  # seconds before the first retry, doubled each time, with jitter
    max_delay: float = 4.0
    connect_timeout: float = 10.0  # per request: a dead endpoint fails well inside a minute
    read_timeout: float = 60.0


def is_transient(err: BaseException) -> bool:
    """Worth another attempt: the server was busy or failed, or the connection broke."""
    import urllib3.exceptions
    from minio.error import InvalidResponseError, S3Error, ServerError

    if isinstance(err, S3Error):
        status = getattr(err.response, "status", 0) or 0
        return err.code in _TRANSIENT_S3_CODES or status >= 500
    if isinstance(err, ServerError):
        return err.status_code >= 500
    if isinstance(err, InvalidResponseError):  # a non-XML 5xx, e.g. from a load balancer
        return isinstance(err._code, int) and err._code >= 500
    return isinstance(err, (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError))


def call(policy: RetryPolicy, what: str, fn: Callable[[], T]) -> T:
    """``fn()``, retried on transient failures; StoreUnavailable once ``policy.attempts`` fail."""
    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(policy.attempts),
        wait=tenacity.wait_random_exponential(multiplier=policy.base_delay, max=policy.max_delay),
        retry=tenacity.retry_if_exception(is_transient),
        reraise=True,
    )
    try:
        return retrying(fn)
    except Exception as err:
        if not is_transient(err):
            raise
        raise StoreUnavailable(
            f"{what}: the object store failed {policy.attempts} times in a row "
            f"({type(err).__name__}: {str(err)[:160]})",
            hint="check that MinIO/S3 is up and reachable, then re-run; nothing was half-published",
        ) from err
