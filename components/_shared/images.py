"""Container images: the one place that names them. The pipeline, the manifests and `make images`
all take their registry and tag from here (tests check the manifests agree)."""

REGISTRY = "ghcr.io/ctp-dev"
TAG = "0.1.0"

BASE_IMAGE = f"{REGISTRY}/ctp-base:{TAG}"
TRAINER_IMAGE = f"{REGISTRY}/ctp-trainer:{TAG}"
