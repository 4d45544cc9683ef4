# images/images.mk: container images, included from the top-level Makefile.
#
#   make images                                  build and push ctp-base and ctp-trainer
#   make images REGISTRY=registry.example/ml TAG=1.2.3
#   make images-build                            build only (no push)
#   make lint-images                             hadolint both Dockerfiles
#
# REGISTRY, TAG and the image names come from components/_shared/images.py, the one place
# that names the images (the compiled pipeline and the manifests use the same references;
# tests/manifests checks that the manifests agree). Values given on the make command line
# override them (the environment does not: a stray TAG variable in CI must not retag images).

IMAGES_MK_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
IMAGES_ROOT := $(abspath $(IMAGES_MK_DIR)/..)
IMAGES_PYTHON ?= $(IMAGES_ROOT)/.venv/bin/python
HADOLINT ?= $(IMAGES_ROOT)/.venv/bin/hadolint
DOCKER ?= docker
DOCKER_BUILD_FLAGS ?=

# "REGISTRY TAG base-name trainer-name", read from images.py once, and only when a recipe
# needs it (a lazily evaluated, then memoised, variable: `make test` does not pay for it).
_IMAGES_PY = $(eval _IMAGES_PY := $(shell cd $(IMAGES_ROOT) && $(IMAGES_PYTHON) -c \
  'from components._shared import images as i; n = lambda r: r.rsplit(":", 1)[0].rsplit("/", 1)[1]; print(i.REGISTRY, i.TAG, n(i.BASE_IMAGE), n(i.TRAINER_IMAGE))'))$(_IMAGES_PY)

REGISTRY = $(word 1,$(_IMAGES_PY))
TAG = $(word 2,$(_IMAGES_PY))
CTP_BASE_IMAGE = $(REGISTRY)/$(word 3,$(_IMAGES_PY)):$(TAG)
CTP_TRAINER_IMAGE = $(REGISTRY)/$(word 4,$(_IMAGES_PY)):$(TAG)

.PHONY: images images-build images-push images-check lint-images

images: images-push

images-check:
	@test "$(words $(_IMAGES_PY))" = 4 || { echo "images.mk: cannot read components/_shared/images.py with $(IMAGES_PYTHON)" >&2; exit 1; }
	@test -n "$(REGISTRY)" && test -n "$(TAG)" || { echo "images.mk: REGISTRY and TAG must not be empty" >&2; exit 1; }

images-build: images-check lint-images
	$(DOCKER) build $(DOCKER_BUILD_FLAGS) -f $(IMAGES_ROOT)/images/base/Dockerfile -t $(CTP_BASE_IMAGE) $(IMAGES_ROOT)
	$(DOCKER) build $(DOCKER_BUILD_FLAGS) -f $(IMAGES_ROOT)/images/trainer/Dockerfile -t $(CTP_TRAINER_IMAGE) $(IMAGES_ROOT)

images-push: images-build
	$(DOCKER) push $(CTP_BASE_IMAGE)
	$(DOCKER) push $(CTP_TRAINER_IMAGE)

lint-images:
	$(HADOLINT) --failure-threshold style $(IMAGES_ROOT)/images/base/Dockerfile $(IMAGES_ROOT)/images/trainer/Dockerfile
