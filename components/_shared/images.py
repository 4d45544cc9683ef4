"""Container images: the one place that names them. The pipeline, the manifests and `make images`
all take their registry and tag from here (tests check the manifests agree). The tag is the
package version (pyproject.toml), written once."""

from importlib.metadata import version

REGISTRY = "ghcr.io/ctp-dev"
TAG = version("ctp")

BASE_IMAGE = f"{REGISTRY}/ctp-base:{TAG}"
TRAINER_IMAGE = f"{REGISTRY}/ctp-trainer:{TAG}"
