# Serving: run the API and benchmark it against mlflow models serve (export: see delivery.mk).
# Included by the main Makefile (-include mk/*.mk); uses its $(PY), $(HEARTML) and install.

.PHONY: serve bench soak

# The benchmarks `make bench` runs, in order, and the arguments of each. Every one runs even
# when one before it missed a target; the run fails at the end if any did. The image's figures
# need a Docker engine and a built image: make image-report (its targets are PASS or MISS too).
BENCHES ?= serve shadow cli cohort soak
BENCH_ARGS ?=
SHADOW_ARGS ?=
CLI_BENCH_ARGS ?=
SOAK_ARGS ?=
# e.g. COHORT_ARGS="--rows 1000000" to skip the 10^7-row cohort
COHORT_ARGS ?=
bench_args_serve = $(BENCH_ARGS)
bench_args_shadow = $(SHADOW_ARGS)
bench_args_cli = $(CLI_BENCH_ARGS)
bench_args_soak = $(SOAK_ARGS)
bench_args_cohort = $(COHORT_ARGS)

serve: install ## Serve the champion on HEARTML_HOST:HEARTML_PORT (127.0.0.1:8000), following promotions
	$(HEARTML) serve

# Each benchmark prints a PASS or MISS line per target (bench/targets.py); the summary repeats
# them all, since the first may be minutes of output back.
bench: install ## Every benchmark in BENCHES (serve vs mlflow, shadow and log cost, CLI, cohort scoring), each target PASS or MISS; fails if any missed (run `make pipeline` first)
	@if [ -n "$(filter serve shadow,$(BENCHES))" ] && ! command -v wrk >/dev/null 2>&1; then \
		echo "wrk not found: installing it from Debian"; \
		apt-get update -qq && apt-get install -y -qq wrk >/dev/null; \
	fi
	@log=$$(mktemp); trap 'rm -f "$$log"' EXIT; failed=""; \
	$(foreach b,$(BENCHES),echo "── bench/$(b).py $(bench_args_$(b))"; \
	  PYTHONUNBUFFERED=1 $(PY) bench/$(b).py $(bench_args_$(b)) 2>&1 | tee -a "$$log" \
	    || failed="$$failed $(b)"; echo;) \
	echo "── every target"; grep -E '^(PASS|MISS)  ' "$$log" || true; \
	if [ -n "$$failed" ]; then echo "bench: a target missed or a benchmark failed in:$$failed"; exit 1; fi; \
	echo "bench: every target met"

soak: install ## Soak: 5 min at concurrency 32 against heartml serve with a promotion every 30 s (each target PASS or MISS)
	$(PY) bench/soak.py $(SOAK_ARGS)
