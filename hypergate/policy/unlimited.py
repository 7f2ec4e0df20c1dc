"""`/unlimited` tokens: a secret holder lifts the limits of one client IP for a while.

A token is what the README recipe prints:

    echo -n '{"timestamp":1700000000000,"ip":"203.0.113.7"}' \\
      | openssl enc -aes-256-cbc -pbkdf2 -iter 10000 -md sha256 -salt -pass pass:SECRET \\
      | base64 | tr '+/' '-_' | tr -d '=\\n'

i.e. base64url (padding optional) of `Salted__ || salt(8) || AES-256-CBC(PKCS#7)`, key and
IV from PBKDF2-HMAC-SHA256(secret, salt, 10000, 48 bytes) split 32/16.

Checks and answers, in this order, as the original (status, error code):
400 missing_payload, 400 missing_caller_ip, 403 invalid_token (cannot decrypt or not
JSON), 400 invalid_payload (no numeric timestamp or no valid ip), 403 ip_mismatch (the
token's ip is not the caller's), 403 timestamp_out_of_window (more than 5 minutes off),
409 replay_detected (this token was used already). Ours adds 503 replay_cache_full /
too_many_grants when the bounded stores are full of live entries (fail closed: a token
is never forgotten while it could still be accepted).

Success grants that IP, for 30 minutes, new channels allowed without bandwidth limit and
labelled `gateway-unlimited`. Sans-IO: time comes in as `now_ms`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
from collections import OrderedDict
from typing import Any

import attrs
from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from .. import limits
from ..errors import HypergateError
from .ingress import Decision, IPAddress, normalize_ip

UNLIMITED_LABEL = "gateway-unlimited"
_OPENSSL_MAGIC = b"Salted__"


class UnlimitedRefused(HypergateError):
    """A refused /unlimited request: HTTP `status` and the original's `code`."""

    def __init__(self, status: int, code: str, detail: str = "", **extra: Any) -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.status = status
        self.code = code
        self.detail = detail
        self.extra = extra


def base64url_decode(token: str) -> bytes:
    """Base64url with or without `=` padding; standard-alphabet input is accepted too."""
    text = token.strip().replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    return base64.b64decode(text, validate=True)


def openssl_decrypt(blob: bytes, secret: str) -> bytes:
    """Inverse of `openssl enc -aes-256-cbc -pbkdf2 -iter 10000 -md sha256 -salt`.

    Raises ValueError when the blob is not such output or the secret is wrong."""
    if len(blob) < 32 or not blob.startswith(_OPENSSL_MAGIC) or (len(blob) - 16) % 16:
        raise ValueError("not OpenSSL salted AES-256-CBC output")
    salt, ciphertext = blob[8:16], blob[16:]
    key_iv = PBKDF2HMAC(
        algorithm=hashes.SHA256(),
        length=48,
        salt=salt,
        iterations=limits.UNLIMITED_PBKDF2_ITERATIONS,
    ).derive(secret.encode("utf-8"))
    decryptor = Cipher(algorithms.AES256(key_iv[:32]), modes.CBC(key_iv[32:])).decryptor()
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    return unpadder.update(padded) + unpadder.finalize()


def _timestamp(payload: dict[str, Any]) -> float | None:
    # The original reads `timestamp` (or `ts`) through Number(), so "1700000000000" works.
    value = payload.get("timestamp", payload.get("ts"))
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


@attrs.frozen
class OpenedToken:
    """A decrypted token: the digest of its bytes (the replay key) and its JSON."""

    digest: bytes
    payload: Any


@attrs.frozen
class UnlimitedGrant:
    ip: str
    expire_at_ms: int


class UnlimitedService:
    """Redeems tokens and remembers grants. One per gateway."""

    def __init__(
        self,
        secret: str,
        *,
        max_replay_entries: int = limits.MAX_UNLIMITED_REPLAY_CACHE,
        max_grants: int = limits.MAX_UNLIMITED_GRANTS,
    ) -> None:
        if not secret:
            raise ValueError("an /unlimited secret must not be empty")
        self._secret = secret
        self._max_replay = max_replay_entries
        self._max_grants = max_grants
        # token digest -> ms after which the token could no longer be accepted anyway
        self._used: OrderedDict[bytes, float] = OrderedDict()
        self._grants: dict[str, int] = {}

    def redeem(self, token: str | None, caller_ip: str, now_ms: int) -> UnlimitedGrant:
        """Check `token` for the caller; the grant, or UnlimitedRefused.

        The same as `admit(open_token(token), check_request(token, caller_ip), now_ms)`;
        a trio caller runs `open_token` (PBKDF2, ~10 ms of CPU) in a thread instead."""
        caller = self.check_request(token, caller_ip)
        return self.admit(self.open_token(token or ""), caller, now_ms)

    @staticmethod
    def check_request(token: str | None, caller_ip: str) -> IPAddress:
        """The cheap checks that come first: a token is there, the caller has an IP."""
        if not token or not token.strip():
            raise UnlimitedRefused(400, "missing_payload")
        caller = normalize_ip(caller_ip or "")
        if caller is None:
            raise UnlimitedRefused(400, "missing_caller_ip")
        return caller

    def open_token(self, token: str) -> OpenedToken:
        """Decrypt and parse a token. Touches no state, so it may run in a thread."""
        if len(token) > limits.MAX_UNLIMITED_TOKEN:
            raise UnlimitedRefused(403, "invalid_token", "token too long")
        try:
            blob = base64url_decode(token)
            payload = json.loads(openssl_decrypt(blob, self._secret).decode("utf-8"))
        except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
            raise UnlimitedRefused(403, "invalid_token", str(exc) or type(exc).__name__) from None
        return OpenedToken(digest=hashlib.sha256(blob).digest(), payload=payload)

    def admit(self, opened: OpenedToken, caller: IPAddress, now_ms: int) -> UnlimitedGrant:
        """The checks on a decrypted token, then the grant."""
        self._forget_expired(now_ms)
        payload = opened.payload
        if not isinstance(payload, dict):
            raise UnlimitedRefused(400, "invalid_payload")
        timestamp = _timestamp(payload)
        requested = normalize_ip(payload["ip"]) if isinstance(payload.get("ip"), str) else None
        if timestamp is None or requested is None:
            raise UnlimitedRefused(400, "invalid_payload")
        if requested != caller:
            raise UnlimitedRefused(403, "ip_mismatch", callerIp=str(caller))
        if abs(now_ms - timestamp) > limits.UNLIMITED_TOKEN_WINDOW_MS:
            raise UnlimitedRefused(403, "timestamp_out_of_window")

        digest = opened.digest
        if digest in self._used:
            raise UnlimitedRefused(409, "replay_detected")
        if len(self._used) >= self._max_replay:
            raise UnlimitedRefused(503, "replay_cache_full")
        ip = str(requested)
        if ip not in self._grants and len(self._grants) >= self._max_grants:
            raise UnlimitedRefused(503, "too_many_grants")
        # A token is acceptable until timestamp + window, so it is remembered until then.
        self._used[digest] = timestamp + limits.UNLIMITED_TOKEN_WINDOW_MS
        expire_at = int(now_ms) + limits.UNLIMITED_GRANT_MS
        self._grants[ip] = expire_at
        return UnlimitedGrant(ip=ip, expire_at_ms=expire_at)

    @property
    def remembered_tokens(self) -> int:
        """Used tokens in the replay cache now."""
        return len(self._used)

    def _forget_expired(self, now_ms: float) -> None:
        for digest, until in list(self._used.items()):
            if until < now_ms:
                del self._used[digest]
        for ip, until in list(self._grants.items()):
            if until <= now_ms:
                del self._grants[ip]

    def grant_expiry(self, client_ip: str, now_ms: float) -> int | None:
        """When the client's grant ends (ms), or None when it has none."""
        address = normalize_ip(client_ip)
        if address is None:
            return None
        until = self._grants.get(str(address))
        return until if until is not None and until > now_ms else None

    def apply(self, decision: Decision, client_ip: str, now_ms: float) -> Decision:
        """The decision for a new channel once grants are considered: a granted IP is
        allowed without limit and labelled `gateway-unlimited` (whatever the policy said)."""
        if self.grant_expiry(client_ip, now_ms) is None:
            return decision
        labels = decision.labels if UNLIMITED_LABEL in decision.labels else (*decision.labels, UNLIMITED_LABEL)
        return Decision(allowed=True, reason="unlimited grant", bandwidth=None, labels=labels)

