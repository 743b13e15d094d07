#!/usr/bin/env python3
"""A relying party that knows only taskmint's discovery URL verifies a
JWT-SVID with PyJWT: it reads /.well-known/openid-configuration, points
PyJWKClient at its jwks_uri, and checks signature, audience and issuer.
A token with a changed payload must be refused.

Usage: discovery_pyjwt.py DISCOVERY_URL CA_PEM AUDIENCE EXPECTED_SUB < token
Exits 0 and prints "discovery_pyjwt: ok" when every check passes.
"""

import base64
import json
import ssl
import sys
import urllib.request

import jwt
from jwt import PyJWKClient


def main() -> int:
    url, ca, audience, expected_sub = sys.argv[1:5]
    token = sys.stdin.read().strip()
    # The discovery listener has a web PKI certificate; trust its CA only.
    ctx = ssl.create_default_context(cafile=ca)

    with urllib.request.urlopen(
        f"{url}/.well-known/openid-configuration", context=ctx, timeout=10
    ) as r:
        config = json.load(r)
    for field in (
        "issuer",
        "jwks_uri",
        "id_token_signing_alg_values_supported",
        "response_types_supported",
        "subject_types_supported",
    ):
        assert field in config, f"openid-configuration lacks {field}"

    client = PyJWKClient(config["jwks_uri"], ssl_context=ctx, timeout=10)
    key = client.get_signing_key_from_jwt(token)
    claims = jwt.decode(
        token,
        key,
        algorithms=config["id_token_signing_alg_values_supported"],
        audience=audience,
        issuer=config["issuer"],
    )
    assert claims["sub"] == expected_sub, f"sub {claims['sub']!r}"
    assert claims["aud"] == audience

    # The same token with a changed claim must not verify.
    header, payload, sig = token.split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body["aud"] = "someone-else"
    forged_payload = (
        base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode()
    )
    forged = f"{header}.{forged_payload}.{sig}"
    try:
        jwt.decode(
            forged,
            key,
            algorithms=["ES256"],
            audience="someone-else",
            issuer=config["issuer"],
        )
    except jwt.InvalidSignatureError:
        pass
    else:
        print("discovery_pyjwt: a forged token verified", file=sys.stderr)
        return 1

    print(
        f"discovery_pyjwt: ok (kid {key.key_id}, iss {claims['iss']}, sub {claims['sub']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
