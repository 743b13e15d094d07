#!/usr/bin/env python3
"""Writes the seed inputs of every fuzz target into fuzz/corpus/<target>/.

Run from the repository root after `taskmint dev init` is available
(`cargo build`); it needs openssl for the CSRs. The committed corpora were
grown from these seeds by fuzzing and then minimized with `cargo fuzz cmin`;
run this only to start a corpus afresh.
"""
import hashlib
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")
TASKMINT = os.environ.get("TASKMINT", os.path.join(ROOT, "target", "debug", "taskmint"))


def put(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + hashlib.sha1(data).hexdigest()), "wb") as f:
        f.write(data)


P256_CSR = []


# --- CSRs: real requests made by openssl, accepted and refused kinds.
def csrs(tmp):
    keys = {
        "p256": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        "p384": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
        "p521": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-521"],
        "ed25519": ["-algorithm", "ED25519"],
        "rsa2048": ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        "rsa3072": ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:3072"],
    }
    for name, opts in keys.items():
        key = os.path.join(tmp, name + ".key")
        subprocess.run(["openssl", "genpkey", *opts, "-out", key], check=True, capture_output=True)
        for digest, extra in [("sha256", []), ("sha1", []), ("sha256", ["-addext", "subjectAltName=URI:spiffe://example.org/evil,DNS:x"])]:
            if name == "ed25519" and digest == "sha1":
                continue
            cmd = ["openssl", "req", "-new", "-key", key, "-subj", "/CN=fuzz", "-outform", "DER"]
            if name != "ed25519":
                cmd.append("-" + digest)
            out = subprocess.run(cmd + extra, check=True, capture_output=True).stdout
            put("csr_to_leaf", out)
            if name == "p256" and digest == "sha256" and not extra:
                P256_CSR.append(out)
    for fixture in ["csr-rsa1024.der", "csr-rsa-e3.der"]:
        with open(os.path.join(ROOT, "tests", "fixtures", fixture), "rb") as f:
            put("csr_to_leaf", f.read())


# --- The task extension, as the encoder writes it.
def tlv(tag, content):
    n = len(content)
    if n < 0x80:
        head = bytes([tag, n])
    else:
        b = n.to_bytes((n.bit_length() + 7) // 8, "big")
        head = bytes([tag, 0x80 | len(b)]) + b
    return head + content


def task_ext(task, holder, owner="", break_glass=False):
    body = tlv(0x0C, task.encode()) + tlv(0x0C, holder.encode())
    if owner:
        body += tlv(0x80, owner.encode())
    if break_glass:
        body += tlv(0x81, b"\xff")
    return tlv(0x30, body)


def task_extensions():
    h = "spiffe://example.org/workload/agent"
    for args in [("build-42", h), ("t", "o", "team-a"), ("t" * 128, h, "", True), ("x" * 200, h, "o" * 60, True)]:
        put("task_extension", task_ext(*args))


# --- SPIFFE ID patterns: a pattern line and an ID line.
def patterns():
    pairs = [
        ("spiffe://example.org/ci/*", "spiffe://example.org/ci/runner"),
        ("spiffe://example.org/ci/*", "spiffe://example.org/ci/a/b"),
        ("spiffe://example.org/ci/**", "spiffe://example.org/ci/a/b"),
        ("spiffe://example.org/ci/**", "spiffe://example.org/ci"),
        ("spiffe://example.org/agent-*", "spiffe://example.org/agent-7"),
        ("spiffe://example.org/workload/agent*", "spiffe://example.org/workload/agent-1"),
        ("spiffe://example.org/a", "spiffe://example.org/a"),
        ("spiffe://example.org/*a*b*c/x", "spiffe://example.org/aXbYc/x"),
        ("spiffe://example.org/" + "*a" * 12 + "b", "spiffe://example.org/" + "a" * 40),
    ]
    for p, i in pairs:
        put("spiffe_pattern", p + "\n" + i)


# --- Configs: the one `dev init` writes, and the README's keys.
def configs(tmp):
    d = os.path.join(tmp, "dev")
    subprocess.run([TASKMINT, "dev", "init", "--dir", d], check=True, capture_output=True)
    with open(os.path.join(d, "taskmint.toml")) as f:
        text = f.read()
    put("config", text)
    put("config", text.replace('path = "data/taskmint.db"', 'url = "postgres://taskmint@db:5432/taskmint"'))
    put("config", text.replace("per_second = 100.0, burst = 200", "per_second = 0.5, burst = 2"))
    with open(os.path.join(d, "policy.cedar")) as f:
        put("policy", f.read())


# --- Policies: the shipped default and the README's examples.
def policies():
    with open(os.path.join(ROOT, "src", "policy", "default.cedar")) as f:
        put("policy", f.read().replace("TRUST_DOMAIN", "example.org"))
    with open(os.path.join(ROOT, "README.md")) as f:
        for block in re.findall(r"```cedar\n(.*?)```", f.read(), re.S):
            put("policy", block)
    put("policy", '@id("ci-watch") permit(principal in Group::"ci", action == Action::"watch", resource);')


# --- Requests: RPC byte, caller byte, then the protobuf body.
def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def field(num, value):
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int):
        return varint(num << 3) + varint(value)
    if isinstance(value, str):
        value = value.encode()
    return varint(num << 3 | 2) + varint(len(value)) + value


def msg(*fields):
    return b"".join(field(n, v) for n, v in fields)


def requests():
    csr = P256_CSR[0]
    task = msg((1, "build-42"))
    other = msg((1, "build-42"), (2, "spiffe://example.org/workload/admin"))
    rpcs = {
        0: [msg((1, "build-42"), (2, csr), (3, 300))],
        1: [msg((1, "build-42"), (2, "db"), (3, 60))],
        2: [msg((1, "00ff"), (2, csr), (4, True))],
        3: [msg((1, "00ff"), (5, "compromised")), msg((2, task)), msg((3, "spiffe://example.org/workload/agent-1")), msg((4, "example.org"))],
        4: [msg((1, "build-42"), (2, "nightly build"), (3, "JIRA-1"), (4, 600), (5, msg((1, "env"), (2, "ci"))), (7, "db"), (7, "queue")),
            msg((1, "incident-7"), (6, "team-agents"), (8, True), (9, "prod is down"))],
        5: [msg((1, task))],
        6: [msg((1, task)), msg((1, other))],
        7: [msg((1, task), (2, "spiffe://example.org/workload/admin"), (3, "db"), (4, 60), (5, "build-42-sub"))],
        8: [msg((1, 0), (5, "sidecar")), msg((2, "example.org"), (3, "spiffe://example.org/workload/agent-1"), (4, "build-42"))],
        9: [msg((1, "sidecar"), (2, 3))],
        10: [msg((1, "00ff"))],
        11: [b""],
        12: [msg((1, 10), (3, "spiffe://example.org/workload/agent-1"), (4, "team-agents"), (5, "build-42"), (6, True))],
        13: [msg((1, 0), (2, 100))],
        14: [msg((1, task))],
        15: [msg((1, True))],
        16: [msg((1, other), (2, "looked at it"))],
        17: [b""],
        18: [b""],
        19: [b""],
    }
    for rpc, bodies in rpcs.items():
        for body in bodies:
            for who in (0, 1):
                put("requests", bytes([rpc, who]) + body)


def main():
    with tempfile.TemporaryDirectory() as tmp:
        csrs(tmp)
        task_extensions()
        patterns()
        configs(tmp)
        policies()
        requests()


if __name__ == "__main__":
    sys.exit(main())
