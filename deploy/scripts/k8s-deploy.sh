#!/usr/bin/env bash
# Kubernetes stages of the pipeline, one sub-command per make target:
#   deploy    make deploy           secrets from the environment, apply -k the overlay with the
#                                   built image, rollout status; rollout undo when it fails
#   rollback  make rollback-deploy  rollout undo of the API to its previous ReplicaSet
#   verify    make verify           smoke test through the Service (kubectl port-forward)
#   report    make deploy-report    what runs where: image, rollout history, URLs
#
# Environment: OVERLAY (dev|prod), NAMESPACE, IMAGE, MLFLOW_IMAGE, ROLLOUT_TIMEOUT, EXPORT_DIR,
# RUN_DIR, SMOKE, and for secrets HEARTML_ADMIN_TOKEN, POSTGRES_PASSWORD, GRAFANA_ADMIN_PASSWORD,
# MLFLOW_SERVING_PASSWORD (Jenkins binds them from credential ids; unset ones keep the Secret
# already in the cluster). The MLflow auth app's admin password and secret key are generated
# into their Secret at the first deploy and never leave the cluster.
set -euo pipefail

OVERLAY=${OVERLAY:-dev}
NAMESPACE=${NAMESPACE:-heartml-$OVERLAY}
ROLLOUT_TIMEOUT=${ROLLOUT_TIMEOUT:-300s}
EXPORT_DIR=${EXPORT_DIR:-exported-model}
RUN_DIR=${RUN_DIR:-.run}
SMOKE=${SMOKE:-python3 scripts/smoke-test.py}
KUBECTL=${KUBECTL:-kubectl}
OVERLAY_DIR="deploy/k8s/overlays/$OVERLAY"
API=deployment/heartml-api

kc() { "$KUBECTL" --namespace "$NAMESPACE" "$@"; }

fail() {
    echo "❌ $*" >&2
    exit 1
}

# apply_secret NAME KEY=ENVVAR...: create or update a Secret from environment variables, through
# a private temporary file so that no value appears in a command line.
apply_secret() {
    local name=$1 pair key var envfile
    shift
    envfile=$(mktemp)
    chmod 600 "$envfile"
    for pair in "$@"; do
        key=${pair%%=*}
        var=${pair#*=}
        printf '%s=%s\n' "$key" "${!var}" >>"$envfile"
    done
    kc create secret generic "$name" --from-env-file="$envfile" --dry-run=client -o yaml |
        kc apply -f - >/dev/null
    rm -f "$envfile"
    echo "🔑 secret $name updated from the environment"
}

ensure_secrets() {
    "$KUBECTL" create namespace "$NAMESPACE" --dry-run=client -o yaml | "$KUBECTL" apply -f - >/dev/null
    if [[ -n "${HEARTML_ADMIN_TOKEN:-}" ]]; then
        apply_secret heartml-api-secrets HEARTML_ADMIN_TOKEN=HEARTML_ADMIN_TOKEN
    elif ! kc get secret heartml-api-secrets >/dev/null 2>&1; then
        echo "ℹ️  no HEARTML_ADMIN_TOKEN and no secret heartml-api-secrets: /admin endpoints stay disabled"
    fi
    if [[ -n "${POSTGRES_PASSWORD:-}" ]]; then
        POSTGRES_USER=${POSTGRES_USER:-mlflow}
        apply_secret heartml-postgres POSTGRES_USER=POSTGRES_USER POSTGRES_PASSWORD=POSTGRES_PASSWORD
    elif ! kc get secret heartml-postgres >/dev/null 2>&1; then
        fail "secret heartml-postgres missing in $NAMESPACE: set POSTGRES_PASSWORD (Jenkins credential heartml-postgres-password) or create it (deploy/k8s/secrets.example.yaml)"
    fi
    if ! kc get secret heartml-mlflow-auth >/dev/null 2>&1; then
        # First deploy: the auth app's admin password and secret key, random, straight into
        # the Secret (read them with kubectl when bootstrapping accounts; README, Operations).
        MLFLOW_AUTH_ADMIN_PASSWORD=$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))') \
            MLFLOW_FLASK_SERVER_SECRET_KEY=$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))') \
            apply_secret heartml-mlflow-auth MLFLOW_AUTH_ADMIN_PASSWORD=MLFLOW_AUTH_ADMIN_PASSWORD \
            MLFLOW_FLASK_SERVER_SECRET_KEY=MLFLOW_FLASK_SERVER_SECRET_KEY
    fi
    if [[ -n "${MLFLOW_SERVING_PASSWORD:-}" ]]; then
        MLFLOW_SERVING_USER=${MLFLOW_SERVING_USER:-heartml-serving}
        apply_secret heartml-mlflow-serving MLFLOW_TRACKING_USERNAME=MLFLOW_SERVING_USER \
            MLFLOW_TRACKING_PASSWORD=MLFLOW_SERVING_PASSWORD
    fi
    if [[ -n "${GRAFANA_ADMIN_PASSWORD:-}" ]]; then
        apply_secret heartml-grafana GF_SECURITY_ADMIN_PASSWORD=GRAFANA_ADMIN_PASSWORD
    elif ! kc get secret heartml-grafana >/dev/null 2>&1; then
        fail "secret heartml-grafana missing in $NAMESPACE: set GRAFANA_ADMIN_PASSWORD (Jenkins credential heartml-grafana-password) or create it"
    fi
}

# render: the overlay with the images of this build, in $RUN_DIR/deploy-$OVERLAY/.
render() {
    : "${IMAGE:?IMAGE is required}"
    : "${MLFLOW_IMAGE:?MLFLOW_IMAGE is required}"
    local dir="$RUN_DIR/deploy-$OVERLAY" cause
    rm -rf "$dir" && mkdir -p "$dir"
    "$KUBECTL" kustomize "$OVERLAY_DIR" >"$dir/overlay.yaml"
    cause="deploy $IMAGE ($(python3 -c 'import json, sys; m = json.load(open(sys.argv[1])); print(m["name"], "v" + str(m["version"]))' "$EXPORT_DIR/model.json" 2>/dev/null || echo "model unknown"))"
    cat >"$dir/kustomization.yaml" <<YAML
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - overlay.yaml
images:
  - name: registry.example.com/heartml/heartml-api
    newName: ${IMAGE%:*}
    newTag: ${IMAGE##*:}
  - name: registry.example.com/heartml/heartml-mlflow
    newName: ${MLFLOW_IMAGE%:*}
    newTag: ${MLFLOW_IMAGE##*:}
patches:
  - target:
      kind: Deployment
      name: heartml-api
    patch: |-
      - op: add
        path: /metadata/annotations
        value:
          kubernetes.io/change-cause: "$cause"
YAML
    echo "$dir"
}

cmd_deploy() {
    [[ -d "$OVERLAY_DIR" ]] || fail "no overlay $OVERLAY_DIR"
    ensure_secrets
    local dir
    dir=$(render)
    echo "🚀 applying $OVERLAY_DIR to namespace $NAMESPACE with $IMAGE"
    "$KUBECTL" apply -k "$dir"
    kc rollout status statefulset/heartml-postgres --timeout="$ROLLOUT_TIMEOUT" ||
        echo "⚠️  PostgreSQL not ready yet; the API serves its baked-in model regardless"
    kc rollout status deployment/heartml-mlflow --timeout="$ROLLOUT_TIMEOUT" ||
        echo "⚠️  MLflow not ready yet; the API serves its baked-in model regardless"
    if ! kc rollout status "$API" --timeout="$ROLLOUT_TIMEOUT"; then
        echo "❌ rollout of $IMAGE failed; rolling back" >&2
        kc describe "$API" | tail -n 30 >&2 || true
        kc rollout undo "$API"
        kc rollout status "$API" --timeout="$ROLLOUT_TIMEOUT" || true
        fail "deploy failed; $API rolled back to $(current_image)"
    fi
    echo "$IMAGE" >"$RUN_DIR/deployed"
    echo "✅ $API in $NAMESPACE runs $(current_image)"
}

current_image() {
    kc get "$API" -o jsonpath='{.spec.template.spec.containers[0].image}'
}

cmd_rollback() {
    echo "⏪ rolling $API in $NAMESPACE back from $(current_image)"
    kc rollout undo "$API"
    kc rollout status "$API" --timeout="$ROLLOUT_TIMEOUT"
    echo "✅ $API now runs $(current_image)"
    kc rollout history "$API" | tail -n 5
}

cmd_verify() {
    local port pf_pid
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
    mkdir -p "$RUN_DIR"
    kc port-forward service/heartml-api "$port:80" >"$RUN_DIR/port-forward.log" 2>&1 &
    pf_pid=$!
    trap 'kill "$pf_pid" 2>/dev/null || true' EXIT
    # shellcheck disable=SC2086  # SMOKE is a command line
    $SMOKE --url "http://127.0.0.1:$port" --expect "$EXPORT_DIR/model.json" --timeout 120
    if [[ -n "${VERIFY_URL:-}" ]]; then
        # shellcheck disable=SC2086
        $SMOKE --url "$VERIFY_URL" --expect "$EXPORT_DIR/model.json" --timeout 60
    fi
}

cmd_report() {
    echo "── deployed in $NAMESPACE (overlay $OVERLAY) ──"
    echo "API image: $(current_image 2>/dev/null || echo 'not deployed')"
    kc get deployment,statefulset,service,ingress,hpa,pdb -o wide 2>/dev/null || true
    echo "── rollout history ──"
    kc rollout history "$API" 2>/dev/null | tail -n 5 || true
    echo "── URLs ──"
    kc get ingress -o jsonpath='{range .items[*]}{.metadata.name}{"\thttps://"}{.spec.rules[0].host}{"\n"}{end}' 2>/dev/null || true
    echo "Grafana:    kubectl -n $NAMESPACE port-forward svc/heartml-grafana 3000:3000  → http://localhost:3000"
    echo "Prometheus: kubectl -n $NAMESPACE port-forward svc/heartml-prometheus 9090:9090 → http://localhost:9090"
}

case "${1:-}" in
    deploy) cmd_deploy ;;
    rollback) cmd_rollback ;;
    verify) cmd_verify ;;
    report) cmd_report ;;
    *) fail "usage: $0 deploy|rollback|verify|report" ;;
esac
