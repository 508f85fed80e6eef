"""The signature of a delivery: what a receiver checks to trust a POST."""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-Vigil-Signature"


def sign(secret: str, body: bytes) -> str:
    """The ``X-Vigil-Signature`` value for ``body``: ``sha256=<hex>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, signature: str) -> bool:
    """Receiver side: whether ``signature`` is the right one for ``body`` (constant time)."""
    return hmac.compare_digest(sign(secret, body), signature)
