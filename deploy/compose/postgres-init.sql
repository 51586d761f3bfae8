-- Run once by the postgres image when it creates its data volume: the database of MLflow's
-- basic-auth app (users and grants), beside the registry's own (POSTGRES_DB=mlflow).
CREATE DATABASE mlflow_auth;
