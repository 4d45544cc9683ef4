"""Canary-deploy step settings: the one place their defaults are written (stdlib only)."""

from __future__ import annotations

import dataclasses

from components._shared.errors import ConfigError

DEPLOY_TARGETS = ("local", "kserve")
# The served InferenceService's payload logger and `ctp log compact` (pipelines/inference_log.py)
# agree on these two: where under the store the logger writes, and the InferenceService
# annotation (copied onto every logged event) that says which ctp version served it.
LOG_PREFIX = "inference-log/"
VERSION_ANNOTATION = "ctp.dev/version"


@dataclasses.dataclass(frozen=True)
class DeployConfig:
    model_name: str = "digits"
    dataset: str = "digits"
    min_agreement: float = 0.7  # share of traffic where canary and champion predict the same class
    max_confidence_drop: float = 0.1  # mean top-class probability may fall at most this much
    traffic_rows: int = 2000  # most recent traffic examples replayed
    alpha: float = 0.05  # significance of the confidence-shift test
    deploy_target: str = "local"  # local: replay recent traffic; kserve: a canary InferenceService

    def __post_init__(self):
        if self.deploy_target not in DEPLOY_TARGETS:
            raise ConfigError(
                f"deploy_target {self.deploy_target!r} unknown", hint=f"use one of {', '.join(DEPLOY_TARGETS)}"
            )


@dataclasses.dataclass(frozen=True)
class KServeConfig:
    name: str = "digits"  # the InferenceService
    namespace: str = "ctp"
    service_account: str = "ctp-kserve"  # the predictor pod: manifests/base/ctp-kserve-serviceaccount.yaml
    model_storage_key: str = "ctp-predictor"  # its read-only S3 key: this entry of KServe's storage-config Secret
    logger_service_account: str = "ctp-logger"  # the payload logger's S3 key: manifests/base/ctp-logger-*
    canary_percent: int = 10
    intervals: int = 3
    interval_seconds: float = 60.0
    ready_timeout_seconds: float = 600.0
    prometheus_url: str = ""  # "" = no error-rate / latency checks
    max_error_rate: float = 0.01
    max_p99_latency_seconds: float = 0.5

    def __post_init__(self):
        if not 0 < self.canary_percent < 100:
            raise ConfigError(f"canary_percent={self.canary_percent} must be between 1 and 99")
        if self.intervals < 1 or self.interval_seconds < 0:
            raise ConfigError("intervals must be >= 1 and interval_seconds >= 0")
