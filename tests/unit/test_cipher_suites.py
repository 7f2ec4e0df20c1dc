"""Cipher suite negotiation on the link handshake, and the suite choice itself."""

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from hypergate.crypto.handshake import FRAME_OVERHEAD, MAGIC, NoiseHandshake, parse_frame_header
from hypergate.crypto.keys import LinkIdentity, RouterKeys
from hypergate.crypto.records import RecordError, RecordOpener, RecordSealer
from hypergate.crypto.suites import AESGCM_SUITE, CHACHAPOLY, has_aes_instructions, parse_cipher
from hypergate.errors import HandshakeError

KEYS = RouterKeys.from_secret(bytes.fromhex("22" * 32))
X86_WITH_AES = "processor\t: 0\nflags\t\t: fpu vme sse2 pclmulqdq ssse3 aes avx2\n"
X86_WITHOUT_AES = "processor\t: 0\nflags\t\t: fpu vme sse2 ssse3\n"
ARM_WITH_CRYPTO = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32\n"
RASPBERRY_PI_4 = "processor\t: 0\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"  # no AES unit


def handshake(offer, responder_pref=None):
    initiator = NoiseHandshake(initiator=True, identity=LinkIdentity.generate(), router=KEYS, suite=offer)
    responder = NoiseHandshake(
        initiator=False, identity=LinkIdentity.generate(), router=KEYS, suite=responder_pref
    )
    for sender, receiver in [(initiator, responder), (responder, initiator), (initiator, responder)]:
        receiver.receive(sender.next_outgoing()[FRAME_OVERHEAD:])
    return initiator.result, responder.result


@pytest.mark.parametrize("offer", [AESGCM_SUITE, CHACHAPOLY])
def test_the_initiators_suite_is_used_by_both_and_its_records_open(offer):
    other = CHACHAPOLY if offer is AESGCM_SUITE else AESGCM_SUITE
    mine, theirs = handshake(offer, responder_pref=other)  # the responder's preference yields
    assert mine.suite is offer and theirs.suite is offer
    sealer = RecordSealer(mine.send_key, mine.suite)
    opener = RecordOpener(theirs.recv_key, theirs.suite)
    records = [sealer.seal(b"x" * n) for n in (0, 1, 70_000)]
    assert opener.feed(b"".join(records)) == [b"", b"x", b"x" * 70_000]


def test_records_are_sealed_with_the_suites_cipher():
    key = bytes(range(32))
    record = RecordSealer(key, AESGCM_SUITE).seal(b"payload")
    header, ciphertext = record[:4], record[4:]
    # Noise's AESGCM nonce: 4 zero bytes and a big-endian counter (ChaChaPoly: little-endian).
    assert AESGCM(key).decrypt(bytes(12), ciphertext, header) == b"payload"
    with pytest.raises(RecordError, match="authentication"):
        RecordOpener(key, CHACHAPOLY).feed(record)
    second = RecordSealer(key, CHACHAPOLY)
    second.seal(b"first")
    record = second.seal(b"second")
    assert ChaCha20Poly1305(key).decrypt(bytes(4) + (1).to_bytes(8, "little"), record[4:], record[:4]) == b"second"


def test_a_suite_byte_changed_on_the_way_fails_the_handshake_no_downgrade():
    initiator = NoiseHandshake(initiator=True, identity=LinkIdentity.generate(), router=KEYS, suite=AESGCM_SUITE)
    responder = NoiseHandshake(initiator=False, identity=LinkIdentity.generate(), router=KEYS)
    first = bytearray(initiator.next_outgoing()[FRAME_OVERHEAD:])
    first[0] = CHACHAPOLY.id  # a man in the middle asks for the other cipher
    # The suite is in the Noise protocol name, which keys message 1's payload (psk mode).
    with pytest.raises(HandshakeError, match="message 1 failed to authenticate: altered on the way"):
        responder.receive(bytes(first))
    assert responder.result is None


def test_unknown_suite_and_old_peers_get_clear_errors():
    responder = NoiseHandshake(initiator=False, identity=LinkIdentity.generate(), router=KEYS)
    with pytest.raises(HandshakeError, match="cipher suite 9, which this hypergate does not know"):
        responder.receive(bytes([9]) + bytes(48))
    with pytest.raises(HandshakeError, match="older hypergate .link protocol v1"):
        parse_frame_header(b"HGL1\x00\x30")
    with pytest.raises(HandshakeError, match="not a hypergate peer"):
        parse_frame_header(b"GET / ")
    assert parse_frame_header(MAGIC + b"\x00\x30") == 48


def test_auto_choice_follows_the_cpus_aes_instructions():
    assert has_aes_instructions(X86_WITH_AES)
    assert has_aes_instructions(ARM_WITH_CRYPTO)
    assert not has_aes_instructions(X86_WITHOUT_AES)
    assert not has_aes_instructions(RASPBERRY_PI_4)
    assert not has_aes_instructions("")


def test_cipher_option_values():
    assert parse_cipher("aesgcm") is AESGCM_SUITE
    assert parse_cipher(" ChaChaPoly ") is CHACHAPOLY
    assert parse_cipher("auto") in (AESGCM_SUITE, CHACHAPOLY)
    with pytest.raises(ValueError, match=r"--cipher: expected one of auto, chachapoly, aesgcm, got 'rc4'"):
        parse_cipher("rc4")
