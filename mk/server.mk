# Server mode: the team's shared MLflow tracking server on PostgreSQL (see scripts/mlflow-server.sh).
MLFLOW_PORT ?= 5001
export MLFLOW_PORT

.PHONY: mlflow-server mlflow-server-container mlflow-server-stop mlflow-server-status

mlflow-server: install ## MLflow server on port 5001 over PostgreSQL (installed and initialised when absent) with the artifact proxy
	@MLFLOW_BIN=$(abspath $(VENV)/bin/mlflow) scripts/mlflow-server.sh start

mlflow-server-container: install image-mlflow ## The same, with the MLflow server image (a container on the host network, 127.0.0.1)
	@MLFLOW_SERVER_IMAGE=$(MLFLOW_IMAGE) scripts/mlflow-server.sh start

mlflow-server-stop: ## Stop the MLflow server (process or container) and its PostgreSQL
	@scripts/mlflow-server.sh stop

mlflow-server-status: ## Is the MLflow server (and its PostgreSQL) running?
	@scripts/mlflow-server.sh status
