# Delivery: static checks of the image and manifests, the container image, Kubernetes, and the
# pipeline stages that need neither Docker nor a cluster. Included by the main Makefile, whose
# install, $(PY), $(HEARTML) and $(VENV) it uses. Every Jenkins stage calls one target here or
# there (see Jenkinsfile); `make pipeline-local` runs the cluster-free stages in order.

# --- static-check tools: pinned, in their own venv so they cannot disturb the project's ------
TOOLS_VENV  := $(VENV)/tools
TOOLS_BIN   := $(TOOLS_VENV)/bin
TOOLS_REQS  := deploy/tools-requirements.txt
TOOLS_STAMP := $(TOOLS_VENV)/.installed

# Kubernetes version every rendered object is validated against (kubernetes-validate schemas).
K8S_VERSION  ?= 1.33.0
K8S_DIR      := deploy/k8s
OVERLAYS     := $(sort $(notdir $(wildcard $(K8S_DIR)/overlays/*)))
RUN_DIR      ?= .run
RENDER_DIR   := $(RUN_DIR)/k8s
CHECKOV_SKIPS := deploy/checkov-skips.yaml
DOCKERFILES  := Dockerfile deploy/mlflow/Dockerfile
SHELL_SCRIPTS := scripts/pipeline-local.sh $(wildcard deploy/scripts/*.sh)
PROMTOOL     := $(TOOLS_BIN)/promtool

# --- image and deployment ----------------------------------------------------------------------
EXPORT_DIR     ?= exported-model
IMAGE_REGISTRY ?= registry.example.com/heartml
IMAGE_NAME     ?= $(IMAGE_REGISTRY)/heartml-api
REGISTRY_HOST  ?= $(firstword $(subst /, ,$(IMAGE_REGISTRY)))
MLFLOW_IMAGE   ?= $(IMAGE_REGISTRY)/heartml-mlflow:3.17.2
GIT_SHA        ?= $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
# Read lazily from the exported model's model.json (written by `heartml export`).
model_field     = $(shell python3 -c "import json; print(json.load(open('$(EXPORT_DIR)/model.json'))['$(1)'])" 2>/dev/null)
MODEL_NAME      = $(call model_field,name)
MODEL_VERSION   = $(call model_field,version)
MODEL_ROC_AUC   = $(call model_field,roc_auc)
MODEL_RUN_ID    = $(call model_field,run_id)
# The image is tagged with the git commit and with commit + model (what `make deploy` uses).
IMAGE_TAG      ?= $(GIT_SHA)-$(MODEL_NAME)-v$(MODEL_VERSION)
IMAGE          ?= $(IMAGE_NAME):$(IMAGE_TAG)
OVERLAY        ?= dev
NAMESPACE      ?= $(if $(filter prod,$(OVERLAY)),heartml,heartml-$(OVERLAY))
ROLLOUT_TIMEOUT ?= 300s
SERVE_PORT     ?= 8000
# The pinned kubectl from `make tools` when installed, else the one on PATH.
KUBECTL        ?= $(if $(wildcard $(TOOLS_BIN)/kubectl),$(abspath $(TOOLS_BIN)/kubectl),kubectl)
SMOKE_URL      ?= http://127.0.0.1:$(SERVE_PORT)

export K8S_VERSION EXPORT_DIR RUN_DIR OVERLAY NAMESPACE ROLLOUT_TIMEOUT KUBECTL

.PHONY: setup ci-info tools lint-docker lint-shell lint-delivery lint-groovy k8s-render k8s-validate monitoring-check audit audit-if-reachable promote-gate \
	export-model serve-model smoke pipeline-local push push-mlflow registry-login deploy \
	rollback-deploy verify deploy-report

$(TOOLS_STAMP): $(TOOLS_REQS)
	@test -x $(TOOLS_BIN)/python || $(PYTHON_BOOT) -m venv $(TOOLS_VENV)
	@$(TOOLS_BIN)/python -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
	@$(TOOLS_BIN)/python -m pip install -q --no-compile -r $(TOOLS_REQS) 2>&1 | grep -v '^WARNING: Location' || true
	@$(call compile_site_packages,$(TOOLS_BIN)/python)
	@for tool in hadolint kubectl kubernetes-validate checkov shellcheck pip-audit; do \
	  test -x $(TOOLS_BIN)/$$tool || { echo "error: $$tool did not install into $(TOOLS_VENV)" >&2; exit 1; }; \
	done
	@touch $@

setup: install tools ## Everything CI needs: the project venv and the pinned check tools

ci-info: ## What this build is: commit, branch, toolchain, and whether Docker and kubectl are here
	@echo "commit:  $(GIT_SHA) ($$(git rev-parse --abbrev-ref HEAD 2>/dev/null || echo detached))"
	@echo "python:  $$($(PYTHON_BOOT) --version 2>&1)"
	@echo "docker:  $$(docker version --format '{{.Server.Version}}' 2>/dev/null | grep . || echo 'no engine')"
	@echo "kubectl: $$($(KUBECTL) version --client 2>/dev/null | sed -n 1p || echo 'not installed (make tools)')"
	@echo "MLflow:  $(MLFLOW_TRACKING_URI)"

tools: $(TOOLS_STAMP) ## Install pinned hadolint, kubectl, kubernetes-validate, checkov, shellcheck, pip-audit (.venv/tools)

lint-docker: $(TOOLS_STAMP) ## hadolint on every Dockerfile (no findings allowed)
	$(TOOLS_BIN)/hadolint $(DOCKERFILES)

lint-shell: $(TOOLS_STAMP) ## shellcheck on the delivery scripts
	$(TOOLS_BIN)/shellcheck $(SHELL_SCRIPTS)

lint-delivery: lint-docker lint-shell ## hadolint + shellcheck

# npm-groovy-lint parses the Jenkinsfile with CodeNarc (Java) offline; pinned, installed from
# npm into the git-ignored .venv. Errors fail the lint; warnings are printed.
GROOVY_LINT_VERSION := 16.2.0
GROOVY_LINT_DIR     := $(VENV)/npm-groovy-lint
GROOVY_LINT         := $(GROOVY_LINT_DIR)/node_modules/.bin/npm-groovy-lint

$(GROOVY_LINT):
	@command -v npm >/dev/null || bash deploy/scripts/apt-install.sh npm
	@command -v java >/dev/null || bash deploy/scripts/apt-install.sh default-jre-headless
	@npm install --prefix $(GROOVY_LINT_DIR) --no-audit --no-fund --loglevel=error \
	  npm-groovy-lint@$(GROOVY_LINT_VERSION) >/dev/null
	@test -x $@ || { echo "error: npm-groovy-lint did not install into $(GROOVY_LINT_DIR)" >&2; exit 1; }

lint-groovy: $(GROOVY_LINT) ## npm-groovy-lint (pinned; CodeNarc, no server) on the Jenkinsfile: errors fail
	$(GROOVY_LINT) --noserver --failon error --output txt Jenkinsfile

k8s-render: $(TOOLS_STAMP) ## Render every overlay with `kubectl kustomize` into .run/k8s/<overlay>.yaml
	@rm -rf $(RENDER_DIR) && mkdir -p $(RENDER_DIR)
	@for overlay in $(OVERLAYS); do \
	  $(TOOLS_BIN)/kubectl kustomize $(K8S_DIR)/overlays/$$overlay > $(RENDER_DIR)/$$overlay.yaml; \
	  echo "rendered $$overlay: $$(grep -c '^kind:' $(RENDER_DIR)/$$overlay.yaml) objects → $(RENDER_DIR)/$$overlay.yaml"; \
	done

k8s-validate: k8s-render ## Render every overlay, validate every object (kubernetes-validate, K8S_VERSION), checkov on manifests + Dockerfiles
	$(TOOLS_BIN)/kubernetes-validate --strict --quiet -k $(K8S_VERSION) \
	  $(RENDER_DIR)/*.yaml $(K8S_DIR)/secrets.example.yaml
	@echo "kubernetes-validate: all $$(cat $(RENDER_DIR)/*.yaml $(K8S_DIR)/secrets.example.yaml | grep -c '^kind:') objects (overlays: $(OVERLAYS); secrets example) valid for Kubernetes $(K8S_VERSION)"
	BC_SKIP_MAPPING=TRUE CHECKOV_SKIP_VERSION_CHECK=true $(TOOLS_BIN)/checkov --quiet --compact --download-external-modules false \
	  --framework kubernetes dockerfile \
	  --skip-check "$$($(TOOLS_BIN)/python -c 'import sys, yaml; print(",".join(s["id"] for s in yaml.safe_load(open(sys.argv[1]))["skips"]))' $(CHECKOV_SKIPS))" \
	  $(foreach o,$(OVERLAYS),-f $(RENDER_DIR)/$(o).yaml) $(foreach f,$(K8S_DIR)/secrets.example.yaml $(DOCKERFILES),-f $(f))
	@echo "checkov: no failed checks (skips and their reasons: $(CHECKOV_SKIPS))"

# promtool is a static binary in Debian's prometheus package: extracted, not installed (no
# service, no users), at the version of the machine's Debian release.
$(PROMTOOL): | $(TOOLS_STAMP)
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	( cd "$$tmp" && { apt-get download prometheus >/dev/null 2>&1 || \
	    { apt-get update -qq >/dev/null 2>&1 && apt-get download prometheus >/dev/null 2>&1; }; } \
	  && dpkg-deb -x prometheus_*.deb x ) \
	  || { echo "error: could not fetch Debian's prometheus package for promtool" >&2; exit 1; }; \
	install -m 0755 "$$tmp/x/usr/bin/promtool" $@
	@$@ --version 2>&1 | sed -n 1p

monitoring-check: $(PROMTOOL) ## promtool: check the alert rules and both Prometheus configs; run the alert unit tests
	$(PROMTOOL) check rules $(K8S_DIR)/base/monitoring/alerts.yml
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	for config in $(K8S_DIR)/base/monitoring/prometheus.yml deploy/compose/prometheus.yml; do \
	  sed "s|/etc/prometheus/alerts.yml|$(CURDIR)/$(K8S_DIR)/base/monitoring/alerts.yml|" $$config > "$$tmp/prometheus.yml"; \
	  echo "$$config:"; $(PROMTOOL) check config "$$tmp/prometheus.yml"; \
	done
	$(PROMTOOL) test rules deploy/monitoring-tests/alerts.test.yml

# Known vulnerabilities we accept, one `--ignore-vuln ID` each, with the reason on the line above.
# (none today)
AUDIT_IGNORES :=

audit: $(TOOLS_STAMP) ## pip-audit over constraints.txt (needs PyPI's JSON API or OSV)
	$(TOOLS_BIN)/pip-audit --strict --no-deps --disable-pip --progress-spinner off $(AUDIT_IGNORES) -r constraints.txt

# In `make lint`: the audit runs whenever a vulnerability service answers, and then any finding
# fails the lint. Where none answers (this team's build machines reach only the package
# indexes), it says so loudly instead of pretending to have checked.
audit-if-reachable: $(TOOLS_STAMP)
	@if $(PY) -c "import urllib.request; urllib.request.urlopen('https://pypi.org/pypi/pip/24.0/json', timeout=5)" 2>/dev/null; then \
	  $(MAKE) --no-print-directory audit; \
	else \
	  echo "warning: pip-audit NOT run: no vulnerability service reachable from this machine (PyPI's per-version JSON API)"; \
	fi

# --- pipeline stages -----------------------------------------------------------------------------

promote-gate: install ## Promotion stage: --list, --auto (gated), --list; records promoted|refused in .run/promotion (exit 2 is no error)
	@mkdir -p $(RUN_DIR) && rm -f $(RUN_DIR)/promotion
	$(HEARTML) promote --list
	@rc=0; $(HEARTML) promote --auto || rc=$$?; \
	case $$rc in \
	  0) echo promoted > $(RUN_DIR)/promotion ;; \
	  2) echo refused > $(RUN_DIR)/promotion; echo "⛔ not promoted: refused by the gate (nothing new to deploy)" ;; \
	  *) echo error > $(RUN_DIR)/promotion; echo "❌ promotion failed (exit $$rc)" >&2; exit 1 ;; \
	esac
	$(HEARTML) promote --list

export-model: install ## Export the champion to exported-model/ (model files + model.json) for the image
	rm -rf $(EXPORT_DIR)
	$(HEARTML) export $(EXPORT_DIR)
	@python3 -m json.tool $(EXPORT_DIR)/model.json

serve-model: install ## Serve exported-model/ on 127.0.0.1:SERVE_PORT (foreground)
	@test -f $(EXPORT_DIR)/model.json || { echo "error: no $(EXPORT_DIR)/model.json; run make export-model" >&2; exit 1; }
	exec $(HEARTML) serve --host 127.0.0.1 --port $(SERVE_PORT) --workers 1 --model-dir $(EXPORT_DIR)

smoke: install ## Smoke-test the API at SMOKE_URL: /health, /ready, /predict, /metrics; /model = exported-model/model.json
	$(PY) scripts/smoke-test.py --url $(SMOKE_URL) --expect $(EXPORT_DIR)/model.json

pipeline-local: install ## Every stage that needs no Docker or cluster, in order: data → … → export → serve → smoke
	bash scripts/pipeline-local.sh

# --- image: build, run and measure it (mk/image.mk) ---------------------------------------------

push: ## Push the API image (both tags); logs in when REGISTRY_USER/REGISTRY_PASSWORD are set
	@$(MAKE) --no-print-directory registry-login
	docker push $(IMAGE)
	docker push $(IMAGE_NAME):$(GIT_SHA)

push-mlflow: image-mlflow ## Build and push the MLflow server image (once per MLflow version)
	@$(MAKE) --no-print-directory registry-login
	docker push $(MLFLOW_IMAGE)

registry-login:
	@if [ -n "$${REGISTRY_USER:-}" ]; then \
	  printf '%s' "$$REGISTRY_PASSWORD" | docker login --username "$$REGISTRY_USER" --password-stdin $(REGISTRY_HOST); \
	fi

# --- Kubernetes (needs a cluster and a kubeconfig) -------------------------------------------

deploy: ## kubectl apply -k OVERLAY (dev|prod) with this build's image; rollout status; rollout undo on failure
	IMAGE=$(IMAGE) MLFLOW_IMAGE=$(MLFLOW_IMAGE) bash deploy/scripts/k8s-deploy.sh deploy

rollback-deploy: ## Roll the API in OVERLAY back to its previous ReplicaSet (kubectl rollout undo)
	bash deploy/scripts/k8s-deploy.sh rollback

verify: install ## Smoke-test the deployed API through its Service (port-forward); /model must be the exported version
	SMOKE="$(PY) scripts/smoke-test.py" bash deploy/scripts/k8s-deploy.sh verify

deploy-report: install ## What is deployed where: registry list, image, rollout history, URLs
	-$(HEARTML) promote --list
	-bash deploy/scripts/k8s-deploy.sh report
