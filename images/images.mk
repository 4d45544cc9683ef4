# images/images.mk: container images, included from the top-level Makefile.
#
#   make images                                  build ctp-base and ctp-trainer (docker, else buildah)
#   make images REGISTRY=registry.example/ml TAG=1.2.3
#   make images-push                             build, then push both
#   make images-lock                             rewrite images/constraints.txt from .venv
#   make image-test                              build both from a local Debian base and run the
#                                                compiled pipeline inside them (docs/containers.md)
#   make lint-images                             hadolint both Dockerfiles
#
# REGISTRY, TAG and the image names come from components/_shared/images.py, the one place
# that names the images (the compiled pipeline and the manifests use the same references;
# tests/manifests checks that the manifests agree). Values given on the make command line
# override them (the environment does not: a stray TAG variable in CI must not retag images).
#
# Build knobs (make command line): BASE_IMAGE (FROM; empty = the Dockerfile's python slim),
# TORCH_PIP_ARGS (set, even empty, to override the Dockerfiles' torch index), IMAGE_BUILD_FLAGS
# (extra flags for docker build / buildah bud, e.g. -v mounts of a local wheelhouse).

IMAGES_MK_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
IMAGES_ROOT := $(abspath $(IMAGES_MK_DIR)/..)
IMAGES_PYTHON ?= $(IMAGES_ROOT)/.venv/bin/python
HADOLINT ?= $(IMAGES_ROOT)/.venv/bin/hadolint
DOCKER ?= docker
BUILDAH ?= buildah
IMAGE_BUILD_FLAGS ?=
BASE_IMAGE ?=

# docker where an engine answers (`docker --version` alone is only the client), else buildah.
# Evaluated once, on first use by a recipe.
IMAGE_ENGINE = $(eval IMAGE_ENGINE := $(shell $(DOCKER) info >/dev/null 2>&1 && echo docker \
  || { command -v $(BUILDAH) >/dev/null 2>&1 && echo buildah; }))$(IMAGE_ENGINE)

# "REGISTRY TAG base-name trainer-name", read from images.py once, and only when a recipe
# needs it (a lazily evaluated, then memoised, variable: `make test` does not pay for it).
_IMAGES_PY = $(eval _IMAGES_PY := $(shell cd $(IMAGES_ROOT) && $(IMAGES_PYTHON) -c \
  'from components._shared import images as i; n = lambda r: r.rsplit(":", 1)[0].rsplit("/", 1)[1]; print(i.REGISTRY, i.TAG, n(i.BASE_IMAGE), n(i.TRAINER_IMAGE))'))$(_IMAGES_PY)

REGISTRY = $(word 1,$(_IMAGES_PY))
TAG = $(word 2,$(_IMAGES_PY))
CTP_BASE_IMAGE = $(REGISTRY)/$(word 3,$(_IMAGES_PY)):$(TAG)
CTP_TRAINER_IMAGE = $(REGISTRY)/$(word 4,$(_IMAGES_PY)):$(TAG)

_BUILD_ARGS = $(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE)) \
  $(if $(filter undefined,$(origin TORCH_PIP_ARGS)),,--build-arg "TORCH_PIP_ARGS=$(TORCH_PIP_ARGS)")
# --isolation chroot: the OCI runtimes cannot set rlimits in sandboxes like CI's; --layers keeps
# the dependency layer cached across code changes, as docker does by default.
_BUILD = $(if $(filter docker,$(IMAGE_ENGINE)),$(DOCKER) build,$(BUILDAH) bud --isolation chroot --layers) \
  $(IMAGE_BUILD_FLAGS) $(_BUILD_ARGS)

.PHONY: images images-build images-push images-check images-engine images-lock images-print \
  image-base image-trainer image-test lint-images

images: image-base image-trainer  ## build the base (CPU) and trainer (CUDA) images (docker, else buildah)

images-build: images  # the old name

images-check:
	@test "$(words $(_IMAGES_PY))" = 4 || { echo "images.mk: cannot read components/_shared/images.py with $(IMAGES_PYTHON)" >&2; exit 1; }
	@test -n "$(REGISTRY)" && test -n "$(TAG)" || { echo "images.mk: REGISTRY and TAG must not be empty" >&2; exit 1; }

images-engine:
	@test -n "$(IMAGE_ENGINE)" || { echo "images.mk: no docker engine answers and buildah is not installed (apt-get install buildah)" >&2; exit 1; }

# One line per image "<reference> <Dockerfile>": what `make images` builds (tests/images reads it).
images-print: images-check
	@echo "$(CTP_BASE_IMAGE) images/base/Dockerfile"
	@echo "$(CTP_TRAINER_IMAGE) images/trainer/Dockerfile"

image-base: images-check images-engine lint-images
	$(_BUILD) -f $(IMAGES_ROOT)/images/base/Dockerfile -t $(CTP_BASE_IMAGE) $(IMAGES_ROOT)

image-trainer: images-check images-engine lint-images
	$(_BUILD) -f $(IMAGES_ROOT)/images/trainer/Dockerfile -t $(CTP_TRAINER_IMAGE) $(IMAGES_ROOT)

images-push: images
	$(if $(filter docker,$(IMAGE_ENGINE)),$(DOCKER),$(BUILDAH)) push $(CTP_BASE_IMAGE)
	$(if $(filter docker,$(IMAGE_ENGINE)),$(DOCKER),$(BUILDAH)) push $(CTP_TRAINER_IMAGE)

images-lock:  ## rewrite images/constraints.txt from .venv (after changing dependencies)
	cd $(IMAGES_ROOT) && $(IMAGES_PYTHON) images/lock.py

image-test: install  ## build both images from a local Debian base, run every compiled step inside them (buildah, root)
	cd $(IMAGES_ROOT) && $(IMAGES_PYTHON) images/image_test.py $(IMAGE_TEST_ARGS)

lint-images:
	$(HADOLINT) --failure-threshold style $(IMAGES_ROOT)/images/base/Dockerfile $(IMAGES_ROOT)/images/trainer/Dockerfile
