# Container images, built and run for real: a local Docker engine where none runs (docker-up,
# docker-down), the base image (pulled, or a stand-in built from Debian), the API image (model
# baked in, or registry mode), the MLflow server image, the image test as the prod pod runs it,
# and the image's figures. Included by the main Makefile; uses delivery.mk's IMAGE, IMAGE_NAME,
# MLFLOW_IMAGE, EXPORT_DIR, RUN_DIR, RENDER_DIR and GIT_SHA.
#
# Network rule of these machines: the daemon has no bridge, no iptables and no IP forwarding;
# every build and container uses --network host, and servers bind 127.0.0.1.

DOCKER_DIR    ?= $(CURDIR)/.run/docker
DOCKER_ENGINE := bash deploy/scripts/docker-engine.sh
BASE_IMAGE    := python:3.11-slim
# The classic builder: Debian's docker.io has no BuildKit. Every RUN gets the host's network.
DOCKER_BUILD  := DOCKER_BUILDKIT=0 docker build --network host
# --pull refreshes the base from its registry, except when the base is the local stand-in.
PULL          = $$(bash deploy/scripts/base-image.sh --is-stand-in || echo --pull)
IMAGE_CONTEXT = $(RUN_DIR)/image-context
REGISTRY_IMAGE ?= $(IMAGE_NAME):$(GIT_SHA)-registry
IMAGE_TEST_OVERLAY ?= prod
IMAGE_REPORT_ARGS ?=

# Once docker-up has started our daemon, every docker command here talks to it (unless
# DOCKER_HOST already names an engine).
ifndef DOCKER_HOST
ifneq ($(wildcard $(DOCKER_DIR)/docker.sock),)
export DOCKER_HOST := unix://$(DOCKER_DIR)/docker.sock
endif
endif
export DOCKER_DIR BASE_IMAGE

.PHONY: docker-up docker-down docker-status base-image image image-registry image-mlflow image-test image-report

docker-up: ## Start a local dockerd (no bridge; data, socket and PID in .run/docker) unless a Docker engine answers
	@$(DOCKER_ENGINE) up

docker-down: ## Stop the dockerd that docker-up started, by its PID
	@$(DOCKER_ENGINE) down

docker-status: ## Which Docker engine answers, if any
	@$(DOCKER_ENGINE) status

base-image: ## python:3.11-slim: present, pulled, or a stand-in built from Debian (cached in ~/.cache/heartml)
	@bash deploy/scripts/base-image.sh

# The build context is assembled from the allow-list of .dockerignore, with EXPORT_DIR as
# exported-model/: the export may live anywhere (a CI workspace, a test's temporary folder).
image: base-image ## Build the API image with the exported model baked in, tagged with commit and model version
	@test -f $(EXPORT_DIR)/model.json || { echo "error: no $(EXPORT_DIR)/model.json; run make export-model" >&2; exit 1; }
	@rm -rf $(IMAGE_CONTEXT) && mkdir -p $(IMAGE_CONTEXT) \
	  && cp -R Dockerfile .dockerignore pyproject.toml constraints.txt src $(IMAGE_CONTEXT)/ \
	  && cp -R $(EXPORT_DIR) $(IMAGE_CONTEXT)/exported-model
	$(DOCKER_BUILD) $(PULL) \
	  --build-arg GIT_COMMIT=$(GIT_SHA) \
	  --build-arg BUILD_DATE=$$(date -u +%Y-%m-%dT%H:%M:%SZ) \
	  --build-arg MODEL_NAME=$(MODEL_NAME) \
	  --build-arg MODEL_VERSION=$(MODEL_VERSION) \
	  --build-arg MODEL_ROC_AUC=$(MODEL_ROC_AUC) \
	  --build-arg MODEL_RUN_ID=$(MODEL_RUN_ID) \
	  -t $(IMAGE) -t $(IMAGE_NAME):$(GIT_SHA) $(IMAGE_CONTEXT)
	@rm -rf $(IMAGE_CONTEXT)
	@mkdir -p $(RUN_DIR) && echo "$(IMAGE)" > $(RUN_DIR)/image
	@echo "built $(IMAGE)"

image-registry: base-image ## Build the API image without a model (--target registry): it serves the registry's champion
	$(DOCKER_BUILD) $(PULL) --target registry \
	  --build-arg GIT_COMMIT=$(GIT_SHA) \
	  --build-arg BUILD_DATE=$$(date -u +%Y-%m-%dT%H:%M:%SZ) \
	  -t $(REGISTRY_IMAGE) .
	@echo "built $(REGISTRY_IMAGE)"

image-mlflow: base-image ## Build the MLflow tracking-server image (PostgreSQL driver, S3 client)
	$(DOCKER_BUILD) $(PULL) -t $(MLFLOW_IMAGE) deploy/mlflow

image-test: install k8s-render ## Run the image as the rendered prod pod runs it: contents, HEALTHCHECK, API, labels, UID; always removed
	$(PY) scripts/image-test.py --image $(IMAGE) --rendered $(RENDER_DIR)/$(IMAGE_TEST_OVERLAY).yaml \
	  --expect $(EXPORT_DIR)/model.json --base $(BASE_IMAGE) --log $(RUN_DIR)/image-test.log

image-report: install k8s-render ## Figures: image size, above the base, docker run → ready, memory after 1,000 requests, docker stop under load
	$(PY) bench/image.py --image $(IMAGE) --base $(BASE_IMAGE) \
	  --rendered $(RENDER_DIR)/$(IMAGE_TEST_OVERLAY).yaml $(IMAGE_REPORT_ARGS)
