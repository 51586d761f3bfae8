# heartml — every task a person or Jenkins runs is a target here. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help
.SHELLFLAGS := -eu -o pipefail -c

PYTHON_BOOT ?= python3
VENV        := .venv
PY          := $(VENV)/bin/python
HEARTML     := $(VENV)/bin/heartml
STAMP       := $(VENV)/.installed

# The UCI files come from the UCI URLs unless HEARTML_DATA_SOURCE names a mirror (a directory or
# base URL). Next to a checkout that has the shared data folder (CI, this team's machines), that
# folder is the default mirror, because these machines reach no site but the package registries.
MIRROR := $(wildcard $(abspath $(CURDIR)/../shared/data/heart-disease))
ifneq ($(MIRROR),)
HEARTML_DATA_SOURCE ?= $(MIRROR)
endif
ifdef HEARTML_DATA_SOURCE
export HEARTML_DATA_SOURCE
endif
export MLFLOW_TRACKING_URI ?= sqlite:///mlflow.db
export PYTHONDONTWRITEBYTECODE := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help install java-runtime pipeline data validate train promote adapt adapt-sites list mlflow-ui test test-suite test-containers test-fast coverage lint format typecheck clean

help: ## List every target with what it does
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-20s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# pip byte-compiles what it installs one file at a time; compileall does it on every core. The
# .pyc files must exist after the install: PYTHONDONTWRITEBYTECODE keeps the runs from writing
# them, so a module without one would be compiled again by every process that imports it.
# heartml's own modules (an editable install) too: every command and test process imports
# them. One edited since is compiled in memory, as before. pytest compiles its plugins
# (hypothesis, schemathesis, anyio: some 270 modules) its own way, rewriting their asserts, in
# every pytest process: one collection with writing allowed stores those too.
compile_site_packages = $(1) -m compileall -q -j 0 "$$($(1) -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" >/dev/null || true

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
	@$(PY) -m pip install -q --no-compile -c constraints.txt -e '.[train,dev,spark]' 2>&1 | grep -v '^WARNING: Location' || true
	@$(call compile_site_packages,$(PY))
	@$(PY) -m compileall -q -j 0 src >/dev/null || true
	@env -u PYTHONDONTWRITEBYTECODE $(PY) -m pytest -q -p no:cacheprovider --collect-only tests/unit/test_errors.py >/dev/null 2>&1 || true
	@$(PY) -c "import heartml, mlflow, sklearn, fastapi, pyspark" || { echo "error: installation failed" >&2; exit 1; }
	@touch $@

# PySpark (heartml score --engine spark, its tests and benchmark) runs on a JVM: Java 17 or
# newer, from Debian's packages when the machine has none.
JAVA_MAJOR = $$(java -version 2>&1 | sed -n 's/.* version "\(1\.\)\{0,1\}\([0-9]*\).*/\2/p' | head -n 1)
java-runtime:
	@major=$(JAVA_MAJOR); \
	if [ -z "$$major" ] || [ "$$major" -lt 17 ]; then \
		bash deploy/scripts/apt-install.sh openjdk-17-jre-headless; \
	fi

install: $(STAMP) java-runtime ## Create .venv (if missing) and install heartml with pinned dependencies, and Java for Spark

pipeline: install ## The main job on the embedded SQLite store: download (all sites) → validate → train → promote → adapt and promote per site → list
	@start=$$(date +%s%N); \
	$(HEARTML) data download --all-sites && \
	$(HEARTML) data validate --all-sites && \
	$(HEARTML) train && \
	{ $(HEARTML) promote --auto; rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 2 ]; } && \
	$(MAKE) --no-print-directory adapt-sites && \
	$(HEARTML) promote --list && \
	echo "" && echo "⏱  pipeline finished in $$(( ($$(date +%s%N) - start) / 1000000 )) ms"

data: install ## Download the four UCI sites' files (sha256-checked) into the data cache
	$(HEARTML) data download --all-sites

validate: install ## Validate the cached data of every site against the schema
	$(HEARTML) data validate --all-sites

train: install ## Train, evaluate, register every candidate and tag the best
	$(HEARTML) train

promote: install ## Promote the best-tagged version (exit 2 = refused by the gate)
	$(HEARTML) promote --auto

# The sites the champion is adapted to (the training site, Cleveland, needs none). Exit 2, a
# site whose sample supports no update (Switzerland: 8 patients without disease), is no error.
ADAPT_SITES ?= hungarian switzerland va

adapt: install adapt-sites ## Adapt the champion to each site of ADAPT_SITES and promote each through the site gate (exit 2 = not adapted or refused, no error)

adapt-sites:
	@rc=0; $(HEARTML) adapt champion $(addprefix --site ,$(ADAPT_SITES)) --promote || rc=$$?; \
	[ $$rc -eq 0 ] || [ $$rc -eq 2 ]

list: install ## Show the model registry
	$(HEARTML) promote --list

mlflow-ui: install ## MLflow UI on port 5001 over the same store
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(VENV)/bin/mlflow ui --backend-store-uri "$(MLFLOW_TRACKING_URI)" --host 127.0.0.1 --port 5001

# The container tests need a Docker engine: with-docker.sh starts one when none answers (and
# stops it by its PID afterwards, whatever happens), or says why they are skipped.
# Two runs, each timed on its own: the suite and the container tests.
# Both always run; the target fails when either does.
test: install ## Install what the tests need (Docker included) and run the whole suite
	@rc=0; \
	$(MAKE) --no-print-directory test-suite || rc=1; \
	$(MAKE) --no-print-directory test-containers || rc=1; \
	exit $$rc

# One pytest-xdist worker per core, a test file per worker at a time: most tests wait on a
# server or a subprocess, and a file's module fixtures (a server, a trained registry) stay one.
# The pinned check tools are installed first, as the project's venv is: on a fresh clone their
# pip install and byte-compiling take half a minute of CPU, which is not a test's.
test-suite: install tools ## Every test but the container tests
	$(PY) -m pytest -q -p no:cacheprovider -m "not container" -n auto --maxprocesses 4 \
	  --dist loadfile

# The same run, measured: every process the tests start is traced too (the CLI commands, the
# servers, the shadow, Spark and training workers), which costs the suite a third more CPU, so
# it is a run of its own. Fails under the floor (fail_under in pyproject.toml).
coverage: install tools ## The suite with line coverage of every process it starts, and its floor
	$(PY) -m pytest -q -p no:cacheprovider -m "not container" -n auto --maxprocesses 4 \
	  --dist loadfile --cov --cov-report=term

test-containers: install ## The container tests: build the images and run them as the pod would
	bash deploy/scripts/with-docker.sh $(PY) -m pytest -q -p no:cacheprovider -m container

test-fast: install ## Unit and data tests only
	$(PY) -m pytest -q -p no:cacheprovider tests/unit tests/data

lint: install lint-delivery lint-groovy audit-if-reachable ## ruff, mypy, import contracts, hadolint, shellcheck, groovy lint (Jenkinsfile), pip-audit
	$(VENV)/bin/ruff check src tests scripts bench
	$(VENV)/bin/ruff format --check src tests scripts bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

format: install ## Format the code
	$(VENV)/bin/ruff format src tests scripts bench
	$(VENV)/bin/ruff check --fix src tests scripts bench

clean: ## Remove the local SQLite store, artifacts, data cache, build outputs (not .venv, not the PostgreSQL server data in .run)
	rm -rf mlflow.db mlartifacts data exported-model .run/k8s .run/promotion .run/image .run/serve.log .pytest_cache .mypy_cache .ruff_cache

-include mk/*.mk
