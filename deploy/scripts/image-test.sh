#!/usr/bin/env bash
# `make image-test`: run the built API image the way the cluster runs it (read-only root
# filesystem, writable /tmp only, non-root, no capabilities, no privilege escalation), check its
# user and model labels, smoke-test it through a published port, and always remove it.
#
# Environment: IMAGE (required), SMOKE (smoke-test command), EXPORT_DIR, RUN_DIR.
set -euo pipefail

: "${IMAGE:?IMAGE is required (make image-test sets it)}"
SMOKE=${SMOKE:-python3 scripts/smoke-test.py}
EXPORT_DIR=${EXPORT_DIR:-exported-model}
RUN_DIR=${RUN_DIR:-.run}
name="heartml-image-test-$$"
mkdir -p "$RUN_DIR"

cleanup() {
    docker logs "$name" >"$RUN_DIR/image-test.log" 2>&1 || true
    docker rm -f "$name" >/dev/null 2>&1 || true
}
trap cleanup EXIT

fail() {
    echo "❌ image-test: $*" >&2
    exit 1
}

user=$(docker image inspect -f '{{.Config.User}}' "$IMAGE")
case "$user" in
    "" | root | 0 | 0:*) fail "$IMAGE runs as '${user:-root}'; it must run as a non-root user" ;;
esac
echo "✅ image user: $user"

expected_version=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["version"])' "$EXPORT_DIR/model.json")
label_version=$(docker image inspect -f '{{ index .Config.Labels "io.heartml.model.version" }}' "$IMAGE")
[[ "$label_version" == "$expected_version" ]] ||
    fail "label io.heartml.model.version is '$label_version', expected '$expected_version'"
echo "✅ image labels: model version $label_version, commit $(docker image inspect -f '{{ index .Config.Labels "io.heartml.git-commit" }}' "$IMAGE")"

docker run -d --name "$name" \
    --read-only --tmpfs /tmp:rw,nosuid,size=256m \
    --cap-drop ALL --security-opt no-new-privileges:true \
    -p 127.0.0.1::8000 "$IMAGE" >/dev/null
port=$(docker port "$name" 8000/tcp | head -n 1 | awk -F: '{ print $NF }')
[[ -n "$port" ]] || fail "no published port for 8000/tcp"
echo "container $name on http://127.0.0.1:$port"

# shellcheck disable=SC2086  # SMOKE is a command line
$SMOKE --url "http://127.0.0.1:$port" --expect "$EXPORT_DIR/model.json" --timeout 120

# The image's own HEALTHCHECK must agree.
for _ in $(seq 1 45); do
    health=$(docker inspect -f '{{ if .State.Health }}{{ .State.Health.Status }}{{ end }}' "$name")
    [[ "$health" == "healthy" ]] && break
    sleep 2
done
[[ "$health" == "healthy" ]] || fail "Docker HEALTHCHECK status is '$health'"
echo "✅ Docker HEALTHCHECK: healthy"
echo "✅ image-test passed: $IMAGE"
