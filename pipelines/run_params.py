"""The parameters of one run: the same builder for `ctp run`, `ctp submit` and the drift monitor.

A run's data fingerprint is computed before it starts (KFP's cache key; ingest refuses data that
changed since), with the window settings the run will really use: the ones given, else the
compiled pipeline's own defaults. So a pipeline compiled with other defaults still submits.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from components._shared.errors import ConfigError
from components._shared.registry import new_version_id
from components._shared.store import Store
from components.ingest.config import IngestConfig

DEFAULT_TRIGGER = "manual"  # what started a run, as recorded in the model card
# How KFP's IR types a parameter's default (YAML and JSON give integers as floats).
_IR_TYPES = {"NUMBER_INTEGER": int, "NUMBER_DOUBLE": float, "BOOLEAN": bool, "STRING": str}


def new_run_id() -> str:
    return f"run-{new_version_id().split('-')[0].lower()}-{secrets.token_hex(2)}"


def parse_params(pairs: tuple[str, ...] | list[str]) -> dict:
    """KEY=VALUE pairs; values are JSON when they parse (10, 0.5, true), else strings."""
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--param {pair!r} is not KEY=VALUE", hint="e.g. --param epochs=5")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


def read_package(path: str | Path) -> dict:
    """The pipeline spec of a compiled YAML (its first document; a platform spec may follow)."""
    import yaml

    with open(path) as handle:
        return next(yaml.safe_load_all(handle))


def spec_defaults(spec: dict) -> dict:
    """Each pipeline parameter's default, typed, from a compiled pipeline spec (KFP IR)."""
    parameters = spec["root"].get("inputDefinitions", {}).get("parameters", {})
    return {
        name: _IR_TYPES.get(p.get("parameterType"), lambda v: v)(p["defaultValue"])
        for name, p in parameters.items()
        if "defaultValue" in p
    }


def run_parameters(
    store: Store,
    defaults: dict,
    *,
    dataset: str,
    model_name: str,
    trigger: str,
    run_id: str,
    evidence_uri: str = "",
    extra: dict | None = None,
) -> dict:
    """Parameters of one run, ``extra`` overriding the pipeline's ``defaults``, with the data
    fingerprint computed now for the window those settings select."""
    from components.ingest.core import data_fingerprint

    extra = extra or {}
    window = {**defaults, **extra}
    config = IngestConfig(
        dataset=dataset,
        model_name=model_name,
        test_fraction=float(window.get("test_fraction", IngestConfig.test_fraction)),
        replay_fraction=float(window.get("replay_fraction", IngestConfig.replay_fraction)),
        replay_ratio=float(window.get("replay_ratio", IngestConfig.replay_ratio)),
    )
    return {
        "store_uri": store.uri,
        "dataset": dataset,
        "model_name": model_name,
        "data_fingerprint": data_fingerprint(store, config),
        "run_id": run_id,
        "trigger": trigger,
        "evidence_uri": evidence_uri,
        **extra,
    }
