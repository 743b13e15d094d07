#!/usr/bin/env bash
# taskmint's MintX509 side by side with cfssl (`cfssl serve`, Debian's
# golang-cfssl): the same P-256 CSRs, the same concurrency (8 and 32 by
# default), the same loopback, in one run, alternating, several rounds.
# Prints both and the ratio taskmint/cfssl.
#
#   bench/cfssl.sh                     # defaults: --concurrency 8,32 --window 5s --rounds 3
#   bench/cfssl.sh --window 10s --rounds 5 --json target/cfssl.json
#
# cfssl signs plain certificates from a CSR. It does not produce SPIFFE
# certificates, authenticate its callers, evaluate policy, bind anything to
# a task or keep an audit trail; taskmint does all of that in the figure.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cfssl >/dev/null || ! command -v cfssljson >/dev/null; then
  echo "bench/cfssl.sh: installing Debian's golang-cfssl" >&2
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq golang-cfssl
  else
    sudo apt-get update -qq && sudo apt-get install -y -qq golang-cfssl
  fi
fi

work=$(mktemp -d)
pid=
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# A P-256 CA and a 1h profile with the usages of a workload certificate.
cat > "$work/ca-csr.json" <<'JSON'
{"CN": "cfssl bench CA", "key": {"algo": "ecdsa", "size": 256}}
JSON
cat > "$work/config.json" <<'JSON'
{"signing": {
  "default": {"expiry": "1h", "usages": ["digital signature", "server auth", "client auth"]},
  "profiles": {"task": {"expiry": "1h", "usages": ["digital signature", "server auth", "client auth"]}}
}}
JSON
(cd "$work" && cfssl gencert -loglevel 5 -initca ca-csr.json | cfssljson -bare ca)

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null || echo 18888)
cfssl serve -loglevel 5 -address 127.0.0.1 -port "$port" \
  -ca "$work/ca.pem" -ca-key "$work/ca-key.pem" -config "$work/config.json" \
  > "$work/cfssl.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
  sleep 0.1
done

cargo build --release --locked -q
echo "cfssl $(cfssl version | head -1) on 127.0.0.1:$port (pid $pid)" >&2
./target/release/taskmint bench cfssl --url "http://127.0.0.1:$port" --cfssl-pid "$pid" "$@"
