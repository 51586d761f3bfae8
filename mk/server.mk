# Server mode: the team's shared MLflow tracking server on PostgreSQL, with MLflow's basic-auth
# app (see scripts/mlflow-server.sh), and its accounts (heartml registry bootstrap).
MLFLOW_PORT ?= 5001
export MLFLOW_PORT
# scripts/mlflow-server.sh keeps the server's data and secrets here (HEARTML_RUN_DIR).
SERVER_RUN_DIR := $(or $(HEARTML_RUN_DIR),.run)
REGISTRY_SECRETS := $(or $(HEARTML_REGISTRY_SECRETS_DIR),$(SERVER_RUN_DIR)/registry)
ACCOUNT ?=

# The local server's admin, for the account targets below: the password goes from its file
# (mode 600) into the command's environment, never onto a command line.
AS_LOCAL_ADMIN = MLFLOW_TRACKING_URI="$$(cat $(SERVER_RUN_DIR)/mlflow.uri)" MLFLOW_TRACKING_USERNAME=admin \
	MLFLOW_TRACKING_PASSWORD="$$(cat $(SERVER_RUN_DIR)/mlflow-admin.password)" \
	HEARTML_REGISTRY_SECRETS_DIR=$(REGISTRY_SECRETS)

.PHONY: mlflow-server mlflow-server-container mlflow-server-stop mlflow-server-status registry-bootstrap registry-password

mlflow-server: install ## MLflow server on port 5001 over PostgreSQL (installed when absent), artifact proxy, authentication; then the accounts
	@MLFLOW_BIN=$(abspath $(VENV)/bin/mlflow) scripts/mlflow-server.sh start
	@$(MAKE) --no-print-directory registry-bootstrap

mlflow-server-container: install image-mlflow ## The same, with the MLflow server image (a container on the host network, 127.0.0.1)
	@MLFLOW_SERVER_IMAGE=$(MLFLOW_IMAGE) scripts/mlflow-server.sh start
	@$(MAKE) --no-print-directory registry-bootstrap

mlflow-server-stop: ## Stop the MLflow server (process or container) and its PostgreSQL
	@scripts/mlflow-server.sh stop

mlflow-server-status: ## Is the MLflow server (and its PostgreSQL) running?
	@scripts/mlflow-server.sh status

registry-bootstrap: install ## Accounts and grants of the local server from configs/registry-access.yaml (idempotent; passwords in .run/registry)
	@test -f $(SERVER_RUN_DIR)/mlflow-admin.password || { echo "error: no $(SERVER_RUN_DIR)/mlflow-admin.password: start the server with make mlflow-server" >&2; exit 1; }
	@$(AS_LOCAL_ADMIN) $(HEARTML) registry bootstrap
	@echo "use it as the pipeline: export MLFLOW_TRACKING_URI=$$(cat $(SERVER_RUN_DIR)/mlflow.uri) MLFLOW_TRACKING_USERNAME=heartml-pipeline MLFLOW_TRACKING_PASSWORD=\"\$$(cat $(REGISTRY_SECRETS)/heartml-pipeline.password)\""

registry-password: install ## New password for ACCOUNT on the local server (admin: ACCOUNT=admin), written to its file only
	@test -n "$(ACCOUNT)" || { echo "error: name the account: make registry-password ACCOUNT=heartml-serving" >&2; exit 1; }
	@$(AS_LOCAL_ADMIN) $(HEARTML) registry password $(ACCOUNT) \
	  $(if $(filter admin,$(ACCOUNT)),--file $(SERVER_RUN_DIR)/mlflow-admin.password)
