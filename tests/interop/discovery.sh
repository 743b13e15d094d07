#!/usr/bin/env bash
# Interop: a dev issuer with discovery on (`dev init --discovery`), run as
# `taskmint serve`; a JWT-SVID minted with the CLI is verified by PyJWT's
# PyJWKClient through the discovery URL (tests/interop/discovery_pyjwt.py).
#
# Usage: tests/interop/discovery.sh [PYTHON]
#   PYTHON: an interpreter with PyJWT[crypto] (default: python3)
#   TASKMINT_BIN: the binary (default: $CARGO_TARGET_DIR or target, /debug/taskmint)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
python=${1:-python3}
bin=${TASKMINT_BIN:-${CARGO_TARGET_DIR:-$here/../../target}/debug/taskmint}

dir=$(mktemp -d)
grpc_port=$((20000 + RANDOM % 20000))
disc_port=$((grpc_port + 1))
"$bin" dev init --dir "$dir" --listen "127.0.0.1:$grpc_port" \
  --discovery "127.0.0.1:$disc_port" 2>/dev/null
"$bin" serve --config "$dir/taskmint.toml" >"$dir/serve.log" 2>&1 &
pid=$!
cleanup() {
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

export TASKMINT_SERVER="127.0.0.1:$grpc_port" TASKMINT_SVID="$dir/agent.pem" \
  TASKMINT_SVID_KEY="$dir/agent.key" TASKMINT_BUNDLE="$dir/bundle.pem"
token=""
for _ in $(seq 1 100); do
  # The compact JWS is the line of three base64url parts.
  if out=$("$bin" mint jwt --task interop-1 --aud db 2>/dev/null); then
    token=$(grep -E '^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$' <<<"$out" | tail -n 1)
    break
  fi
  if ! kill -0 "$pid" 2>/dev/null; then cat "$dir/serve.log" >&2; exit 1; fi
  sleep 0.2
done
[ -n "$token" ] || { echo "could not mint a token" >&2; cat "$dir/serve.log" >&2; exit 1; }

printf '%s' "$token" | "$python" "$here/discovery_pyjwt.py" "https://127.0.0.1:$disc_port" \
  "$dir/discovery-ca.pem" db "spiffe://example.org/workload/agent"
