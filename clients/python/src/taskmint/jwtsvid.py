"""Verifying a JWT-SVID minted by taskmint, with only ``cryptography``.

The keys come from the issuer's SPIFFE bundle (``GetTrustBundle``'s
``spiffe_bundle_jwks``), whose JWT keys are marked ``use: jwt-svid``; several
generic JOSE libraries refuse that ``use`` value, so this module reads the
bundle itself. A relying party should also check the credential's state
(``Client.check_status``) or follow the revocation feed: a valid signature
does not mean the task is still running.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from .errors import TaskmintError


class InvalidToken(TaskmintError):
    """The token is malformed, not signed by a bundle key, expired, not yet
    valid, or for another audience."""


def _b64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _es256_key(jwk: dict[str, Any]) -> ec.EllipticCurvePublicKey:
    if jwk.get("kty") != "EC" or jwk.get("crv") != "P-256":
        raise InvalidToken(f"key `{jwk.get('kid')}` is not a P-256 EC key")
    x = int.from_bytes(_b64(jwk["x"]), "big")
    y = int.from_bytes(_b64(jwk["y"]), "big")
    return ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()


def verify(
    token: str, bundle_jwks: str, audience: str, now: float | None = None, leeway: int = 0
) -> dict[str, Any]:
    """Verifies an ES256 JWT-SVID against a SPIFFE bundle and returns its claims.

    Args:
        token: the compact JWT.
        bundle_jwks: the SPIFFE bundle, JSON (``trust_bundle().spiffe_bundle_jwks``).
        audience: the ``aud`` this relying party accepts.
        now: Unix seconds to judge ``exp``/``nbf`` by (default: the clock).
        leeway: seconds of clock skew tolerated.

    Raises:
        InvalidToken: naming what failed.
    """
    try:
        head_b64, body_b64, sig_b64 = token.split(".")
        header = json.loads(_b64(head_b64))
        claims: dict[str, Any] = json.loads(_b64(body_b64))
        sig = _b64(sig_b64)
    except ValueError:
        raise InvalidToken("not a compact JWS (header.claims.signature)") from None
    if header.get("alg") != "ES256":
        raise InvalidToken(f"alg `{header.get('alg')}` is not ES256")
    keys = [
        k
        for k in json.loads(bundle_jwks).get("keys", [])
        if k.get("use") == "jwt-svid" and k.get("kid") == header.get("kid")
    ]
    if not keys:
        raise InvalidToken(f"no jwt-svid key `{header.get('kid')}` in the bundle")
    if len(sig) != 64:
        raise InvalidToken("an ES256 signature is 64 bytes")
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    try:
        _es256_key(keys[0]).verify(
            der, f"{head_b64}.{body_b64}".encode("ascii"), ec.ECDSA(hashes.SHA256())
        )
    except InvalidSignature:
        raise InvalidToken("the signature does not verify") from None
    t = time.time() if now is None else now
    if t > claims.get("exp", 0) + leeway:
        raise InvalidToken(f"expired at {claims.get('exp')}")
    if t + leeway < claims.get("nbf", 0):
        raise InvalidToken(f"not valid before {claims.get('nbf')}")
    aud = claims.get("aud")
    if aud != audience and not (isinstance(aud, list) and audience in aud):
        raise InvalidToken(f"audience {aud!r} is not `{audience}`")
    return claims
