# Serving: run the API and benchmark it against mlflow models serve (export: see delivery.mk).
# Included by the main Makefile (-include mk/*.mk); uses its $(PY), $(HEARTML) and install.

.PHONY: serve bench soak

BENCH_ARGS ?=

serve: install ## Serve the champion on HEARTML_HOST:HEARTML_PORT (127.0.0.1:8000), following promotions
	$(HEARTML) serve

bench: install ## Benchmark /predict against mlflow models serve, then what a shadow and the log cost (run `make pipeline` first)
	@command -v wrk >/dev/null 2>&1 || { \
		echo "wrk not found: installing it from Debian"; \
		apt-get update -qq && apt-get install -y -qq wrk >/dev/null; \
	}
	$(PY) bench/serve.py $(BENCH_ARGS)
	$(PY) bench/shadow.py

soak: install ## Soak: 5 min at concurrency 32 against heartml serve with a promotion every 30 s (prints the figures)
	$(PY) bench/soak.py $(SOAK_ARGS)
