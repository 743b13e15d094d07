#!/usr/bin/env bash
# The Python client in CI: a fresh venv, `pip install` of the package (its
# gRPC modules generated from proto/ by the build), the tests against a live
# dev server, then the example workload against another live server.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
python=${PYTHON:-python3}

work=$(mktemp -d)
pid=
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# Debian ships venv's pip bootstrap in a package of its own.
if ! "$python" -c 'import ensurepip' 2>/dev/null && command -v apt-get >/dev/null; then
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-venv
fi
"$python" -m venv "$work/venv"
export PIP_CONSTRAINT="$here/constraints.txt" PIP_DISABLE_PIP_VERSION_CHECK=1
"$work/venv/bin/pip" install -q "$here[spiffe,test]"

# The server under test: TASKMINT_BIN if given, else this checkout's debug build.
if [ -z "${TASKMINT_BIN:-}" ]; then
  (cd "$repo" && cargo build --locked -q --bin taskmint)
  target=$(cd "$repo" && cargo metadata --format-version 1 --no-deps |
    "$python" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
  TASKMINT_BIN="$target/debug/taskmint"
fi
export TASKMINT_BIN

# The tests import the installed package (src/ layout: the tree cannot shadow it).
(cd "$here" && "$work/venv/bin/python" -m pytest -q -p no:cacheprovider)

# The example, against a server started the way the README's quick start does.
port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$TASKMINT_BIN" dev init --dir "$work/dev" --listen "127.0.0.1:$port" >/dev/null 2>&1
"$TASKMINT_BIN" serve --config "$work/dev/taskmint.toml" >"$work/serve.log" 2>&1 &
pid=$!
for _ in $(seq 100); do
  if "$python" -c "import socket; socket.create_connection(('127.0.0.1', $port), 1)" 2>/dev/null; then break; fi
  if ! kill -0 "$pid" 2>/dev/null; then cat "$work/serve.log" >&2; exit 1; fi
  sleep 0.2
done
"$work/venv/bin/python" "$here/examples/agent.py" --server "127.0.0.1:$port" \
  --svid "$work/dev/agent.pem" --svid-key "$work/dev/agent.key" --bundle "$work/dev/bundle.pem"
