"""/unlimited tokens: decryption compatible with `openssl enc`, every check, the stores."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess

import pytest
from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from hypergate import limits
from hypergate.policy.ingress import BandwidthLimit, Decision
from hypergate.policy.unlimited import (
    UNLIMITED_LABEL,
    UnlimitedRefused,
    UnlimitedService,
    base64url_decode,
    openssl_decrypt,
)

SECRET = "correct horse battery staple"
NOW = 1_700_000_000_000
MINUTE = 60_000


def make_token(payload: object, secret: str = SECRET, *, pad: bool = False, raw: bytes | None = None) -> str:
    """What `openssl enc -aes-256-cbc -pbkdf2 -iter 10000 -md sha256 -salt` + base64url
    produce (written independently of the code under test, from the format)."""
    plaintext = raw if raw is not None else json.dumps(payload).encode()
    salt = os.urandom(8)
    key_iv = PBKDF2HMAC(hashes.SHA256(), 48, salt, 10000).derive(secret.encode())
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    enc = Cipher(algorithms.AES256(key_iv[:32]), modes.CBC(key_iv[32:])).encryptor()
    blob = b"Salted__" + salt + enc.update(padded) + enc.finalize()
    token = base64.urlsafe_b64encode(blob).decode()
    return token if pad else token.rstrip("=")


def refused(service: UnlimitedService, token: str | None, caller: str, now: int = NOW) -> tuple[int, str]:
    with pytest.raises(UnlimitedRefused) as info:
        service.redeem(token, caller, now)
    return info.value.status, info.value.code


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl command missing")
def test_decrypts_real_openssl_output():
    plaintext = b'{"timestamp":1700000000000,"ip":"127.0.0.1"}'
    blob = subprocess.run(
        ["openssl", "enc", "-aes-256-cbc", "-pbkdf2", "-iter", "10000", "-md", "sha256", "-salt",
         "-pass", f"pass:{SECRET}"],
        input=plaintext, capture_output=True, check=True, timeout=30,
    ).stdout
    assert openssl_decrypt(blob, SECRET) == plaintext
    with pytest.raises(ValueError):
        openssl_decrypt(blob, SECRET + "x")


def test_base64url_with_and_without_padding_and_standard_alphabet():
    data = bytes(range(250))
    padded = base64.urlsafe_b64encode(data).decode()
    assert base64url_decode(padded) == data
    assert base64url_decode(padded.rstrip("=")) == data
    assert base64url_decode(base64.b64encode(data).decode()) == data


def test_success_grants_30_minutes():
    service = UnlimitedService(SECRET)
    grant = service.redeem(make_token({"timestamp": NOW, "ip": "203.0.113.7"}), "203.0.113.7", NOW + 1000)
    assert grant.ip == "203.0.113.7"
    assert grant.expire_at_ms == NOW + 1000 + 30 * MINUTE
    assert service.grant_expiry("203.0.113.7", NOW + 29 * MINUTE) == grant.expire_at_ms
    assert service.grant_expiry("::ffff:203.0.113.7", NOW + 29 * MINUTE) == grant.expire_at_ms
    assert service.grant_expiry("203.0.113.7", grant.expire_at_ms) is None
    assert service.grant_expiry("203.0.113.8", NOW) is None


def test_padded_token_and_string_timestamp_and_mapped_caller_are_accepted():
    service = UnlimitedService(SECRET)
    token = make_token({"timestamp": str(NOW), "ip": "192.0.2.5"}, pad=True)
    assert service.redeem(token, "::ffff:192.0.2.5", NOW).ip == "192.0.2.5"
    ipv6 = make_token({"ts": NOW, "ip": "2001:db8::1"})
    assert service.redeem(ipv6, "2001:DB8:0::1", NOW).ip == "2001:db8::1"


def test_each_refusal_has_the_original_status_and_code():
    service = UnlimitedService(SECRET)
    ok = {"timestamp": NOW, "ip": "192.0.2.5"}
    assert refused(service, None, "192.0.2.5") == (400, "missing_payload")
    assert refused(service, "  ", "192.0.2.5") == (400, "missing_payload")
    assert refused(service, make_token(ok), "") == (400, "missing_caller_ip")
    assert refused(service, make_token(ok, "wrong secret"), "192.0.2.5") == (403, "invalid_token")
    assert refused(service, "garbage!!", "192.0.2.5") == (403, "invalid_token")
    assert refused(service, "U2FsdGVkX19zaG9ydA", "192.0.2.5") == (403, "invalid_token")
    assert refused(service, "A" * 5000, "192.0.2.5") == (403, "invalid_token")
    assert refused(service, make_token(None, raw=b"not json"), "192.0.2.5") == (403, "invalid_token")
    assert refused(service, make_token([1, 2]), "192.0.2.5") == (400, "invalid_payload")
    assert refused(service, make_token({"ip": "192.0.2.5"}), "192.0.2.5") == (400, "invalid_payload")
    assert refused(service, make_token({"timestamp": True, "ip": "192.0.2.5"}), "192.0.2.5") == (400, "invalid_payload")
    assert refused(service, make_token({"timestamp": NOW, "ip": "nope"}), "192.0.2.5") == (400, "invalid_payload")
    assert refused(service, make_token(ok), "192.0.2.6") == (403, "ip_mismatch")
    stale = {"timestamp": NOW - 5 * MINUTE - 1, "ip": "192.0.2.5"}
    future = {"timestamp": NOW + 5 * MINUTE + 1, "ip": "192.0.2.5"}
    assert refused(service, make_token(stale), "192.0.2.5") == (403, "timestamp_out_of_window")
    assert refused(service, make_token(future), "192.0.2.5") == (403, "timestamp_out_of_window")
    edge = {"timestamp": NOW - 5 * MINUTE, "ip": "192.0.2.5"}
    assert service.redeem(make_token(edge), "192.0.2.5", NOW).ip == "192.0.2.5"
    # Nothing refused above was granted.
    assert service.grant_expiry("192.0.2.6", NOW) is None


def test_ip_mismatch_names_the_caller():
    service = UnlimitedService(SECRET)
    with pytest.raises(UnlimitedRefused) as info:
        service.redeem(make_token({"timestamp": NOW, "ip": "192.0.2.5"}), "::ffff:192.0.2.9", NOW)
    assert info.value.extra == {"callerIp": "192.0.2.9"}


def test_replay_is_refused_with_or_without_padding_for_as_long_as_the_token_lives():
    service = UnlimitedService(SECRET)
    token = make_token({"timestamp": NOW, "ip": "192.0.2.5"}, pad=True)
    service.redeem(token, "192.0.2.5", NOW)
    assert refused(service, token, "192.0.2.5", NOW + 1) == (409, "replay_detected")
    assert refused(service, token.rstrip("="), "192.0.2.5", NOW + 5 * MINUTE) == (409, "replay_detected")
    # Past its window the token is stale anyway, and the cache may forget it.
    assert refused(service, token, "192.0.2.5", NOW + 5 * MINUTE + 1) == (403, "timestamp_out_of_window")
    assert service.remembered_tokens == 0
    # A fresh token for the same IP is fine.
    service.redeem(make_token({"timestamp": NOW + 6 * MINUTE, "ip": "192.0.2.5"}), "192.0.2.5", NOW + 6 * MINUTE)


def test_replay_cache_is_bounded_and_fails_closed():
    service = UnlimitedService(SECRET, max_replay_entries=3)
    tokens = [make_token({"timestamp": NOW, "ip": "192.0.2.5"}) for _ in range(4)]
    for token in tokens[:3]:
        service.redeem(token, "192.0.2.5", NOW)
    assert refused(service, tokens[3], "192.0.2.5", NOW) == (503, "replay_cache_full")
    # The remembered ones are still refused as replays: nothing live was forgotten.
    assert refused(service, tokens[0], "192.0.2.5", NOW) == (409, "replay_detected")
    # Once they expire there is room again.
    later = NOW + 5 * MINUTE + 1
    service.redeem(make_token({"timestamp": later, "ip": "192.0.2.5"}), "192.0.2.5", later)


def test_grants_are_bounded():
    service = UnlimitedService(SECRET, max_grants=2)
    for ip in ("192.0.2.1", "192.0.2.2"):
        service.redeem(make_token({"timestamp": NOW, "ip": ip}), ip, NOW)
    assert refused(service, make_token({"timestamp": NOW, "ip": "192.0.2.3"}), "192.0.2.3") == (503, "too_many_grants")
    # Renewing an existing grant is always possible.
    service.redeem(make_token({"timestamp": NOW, "ip": "192.0.2.1"}), "192.0.2.1", NOW + 1)


def test_apply_lifts_limits_and_labels_only_granted_ips():
    service = UnlimitedService(SECRET)
    service.redeem(make_token({"timestamp": NOW, "ip": "192.0.2.5"}), "192.0.2.5", NOW)
    limited = Decision(False, "denied by defaults", BandwidthLimit(1), ("x",))
    lifted = service.apply(limited, "192.0.2.5", NOW + MINUTE)
    assert lifted == Decision(True, "unlimited grant", None, ("x", UNLIMITED_LABEL))
    assert service.apply(lifted, "192.0.2.5", NOW).labels == ("x", UNLIMITED_LABEL)
    assert service.apply(limited, "192.0.2.6", NOW) is limited
    assert service.apply(limited, "192.0.2.5", NOW + limits.UNLIMITED_GRANT_MS) is limited


def test_empty_secret_is_refused():
    with pytest.raises(ValueError):
        UnlimitedService("")
