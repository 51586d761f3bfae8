#!/usr/bin/env bash
# The pipeline without Jenkins: every stage that needs neither Docker nor a cluster, in order,
# through the same make targets the Jenkinsfile calls:
#
#   download → validate → train → promote → export → serve (background) → smoke → stop
#
# and a summary of the stages with their timings. The server is always stopped (trap), also
# when a stage fails or the run is interrupted. "Refused by the gate" is not a failure: the
# stages after promote are skipped, as Jenkins skips the deploy.
#
# Where things go follows the usual settings (MLFLOW_TRACKING_URI, HEARTML_DATA_DIR, ...) plus
# EXPORT_DIR (default exported-model) and RUN_DIR (default .run: logs and the promotion outcome).
set -euo pipefail
cd "$(dirname "$0")/.."

MAKE=${MAKE:-make}
RUN_DIR=${RUN_DIR:-.run}
EXPORT_DIR=${EXPORT_DIR:-exported-model}
SERVE_TIMEOUT_S=${SERVE_TIMEOUT_S:-120}
export RUN_DIR EXPORT_DIR
mkdir -p "$RUN_DIR"

STAGES=(download validate train promote export serve smoke stop)
declare -A RESULT=() SECONDS_TAKEN=()
server_pid=""
port=""
pipeline_start=$(date +%s%N)

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

stop_server() {
    if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
        # The server runs in its own process group (setsid): stop make, heartml and workers.
        kill -TERM -- "-$server_pid" 2>/dev/null || kill -TERM "$server_pid" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$server_pid" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL -- "-$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    server_pid=""
}

summary() {
    local rc=$1 total_ms stage
    total_ms=$(( ($(date +%s%N) - pipeline_start) / 1000000 ))
    echo ""
    echo "════════════════════════════════════════════════════"
    echo " pipeline-local: stage summary"
    echo "════════════════════════════════════════════════════"
    printf ' %-10s %-32s %9s\n' "stage" "result" "seconds"
    for stage in "${STAGES[@]}"; do
        printf ' %-10s %-32s %9s\n' "$stage" "${RESULT[$stage]:-not run}" "${SECONDS_TAKEN[$stage]:--}"
    done
    echo "────────────────────────────────────────────────────"
    printf ' %-43s %9s\n' "total" "$(awk -v ms="$total_ms" 'BEGIN { printf "%.1f", ms / 1000 }')"
    if [[ $rc -eq 0 ]]; then
        echo " ✅ pipeline-local passed"
    else
        echo " ❌ pipeline-local failed (exit $rc)"
    fi
}

on_exit() {
    local rc=$?
    if [[ -n "$server_pid" ]]; then
        stop_server
        [[ -n "${RESULT[stop]:-}" ]] || RESULT[stop]="stopped (cleanup)"
    fi
    summary "$rc"
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# run_stage NAME COMMAND...: run, time and record one stage; a failure ends the pipeline.
run_stage() {
    local name=$1 start rc=0
    shift
    echo ""
    echo "▶ stage $name: $*"
    start=$(now_ms)
    "$@" || rc=$?
    SECONDS_TAKEN[$name]=$(awk -v ms="$(( $(now_ms) - start ))" 'BEGIN { printf "%.1f", ms / 1000 }')
    if [[ $rc -ne 0 ]]; then
        RESULT[$name]="FAILED (exit $rc)"
        exit "$rc"
    fi
    RESULT[$name]=${RESULT[$name]:-ok}
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

start_server() {
    port=$(free_port)
    setsid "$MAKE" --no-print-directory serve-model SERVE_PORT="$port" EXPORT_DIR="$EXPORT_DIR" \
        >"$RUN_DIR/serve.log" 2>&1 &
    server_pid=$!
    local deadline=$(( $(date +%s) + SERVE_TIMEOUT_S ))
    until python3 -c "import urllib.request, sys; urllib.request.urlopen(sys.argv[1], timeout=2)" \
        "http://127.0.0.1:$port/health" 2>/dev/null; do
        if ! kill -0 "$server_pid" 2>/dev/null; then
            echo "❌ the server exited; last lines of $RUN_DIR/serve.log:" >&2
            tail -n 30 "$RUN_DIR/serve.log" >&2
            server_pid=""
            return 1
        fi
        if (( $(date +%s) > deadline )); then
            echo "❌ no answer on port $port within ${SERVE_TIMEOUT_S}s; see $RUN_DIR/serve.log" >&2
            return 1
        fi
        sleep 0.3
    done
    RESULT[serve]="ok (pid $server_pid, port $port)"
    echo "serving $EXPORT_DIR on http://127.0.0.1:$port (log: $RUN_DIR/serve.log)"
}

run_stage download "$MAKE" --no-print-directory data
run_stage validate "$MAKE" --no-print-directory validate
run_stage train "$MAKE" --no-print-directory train
run_stage promote "$MAKE" --no-print-directory promote-gate
if [[ "$(cat "$RUN_DIR/promotion" 2>/dev/null)" == "refused" ]]; then
    RESULT[promote]="refused by the gate"
    for stage in export serve smoke stop; do
        RESULT[$stage]="skipped (not promoted)"
    done
    exit 0
fi
run_stage export "$MAKE" --no-print-directory export-model EXPORT_DIR="$EXPORT_DIR"
run_stage serve start_server
run_stage smoke "$MAKE" --no-print-directory smoke SMOKE_URL="http://127.0.0.1:$port" EXPORT_DIR="$EXPORT_DIR"
run_stage stop stop_server
