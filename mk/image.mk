# Container images, built and run for real: a local Docker engine where none runs (docker-up,
# docker-down) and the base image (pulled, or a stand-in built from Debian). Included by the
# main Makefile.
#
# Network rule of these machines: the daemon has no bridge, no iptables and no IP forwarding;
# every build and container uses --network host, and servers bind 127.0.0.1.

DOCKER_DIR    ?= $(CURDIR)/.run/docker
DOCKER_ENGINE := bash deploy/scripts/docker-engine.sh
BASE_IMAGE    := python:3.11-slim

# Once docker-up has started our daemon, every docker command here talks to it (unless
# DOCKER_HOST already names an engine).
ifndef DOCKER_HOST
ifneq ($(wildcard $(DOCKER_DIR)/docker.sock),)
export DOCKER_HOST := unix://$(DOCKER_DIR)/docker.sock
endif
endif
export DOCKER_DIR BASE_IMAGE

.PHONY: docker-up docker-down docker-status base-image

docker-up: ## Start a local dockerd (no bridge; data, socket and PID in .run/docker) unless a Docker engine answers
	@$(DOCKER_ENGINE) up

docker-down: ## Stop the dockerd that docker-up started, by its PID
	@$(DOCKER_ENGINE) down

docker-status: ## Which Docker engine answers, if any
	@$(DOCKER_ENGINE) status

base-image: ## python:3.11-slim: present, pulled, or a stand-in built from Debian (cached in ~/.cache/heartml)
	@bash deploy/scripts/base-image.sh
