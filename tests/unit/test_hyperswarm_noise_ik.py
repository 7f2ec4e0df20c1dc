"""The IK handshake against the vector made with Node (HYPERSWARM-WIRE.md 4.1)."""

from __future__ import annotations

import pytest

from hypergate.dht.crypto import KeyPair
from hypergate.dht.payloads import NoisePayload
from hypergate.hyperswarm.noise_ik import Initiator, NoiseError, Responder

SERVER = KeyPair.from_seed(bytes([0x01]) * 32)
CLIENT = KeyPair.from_seed(bytes([0x02]) * 32)
CLIENT_E = bytes([0xE0]) * 32
SERVER_E = bytes([0xE1]) * 32

PAYLOAD1 = bytes.fromhex("011a000001c0a8010549c20100010001")
MSG1 = bytes.fromhex(
    "9ff6204d61b59a9e61afdd64fdf294bfe8a16687ba0538823ba59db6cb7b21ff335416c5a4237b26333b302e0f7d4c13"
    "fb5a7b2ce40a19c02a1816ebd259844c77b14c308f0f1ca296308e2c74bb98bfb5221b1db783291d928eb1a6db05d02d"
    "51a072fd1a90d3e65d6fdd95e1391088"
)
PAYLOAD2 = bytes.fromhex("011a0001010506070849c20100020001")
MSG2 = bytes.fromhex(
    "25fc32c478a5a4f84e4557a0342e08278c883641b6149bdb0b4a986ab6c2cb78c5717ad4466e866278768e3295505c86"
    "c4067fd5b696fdf6ba67e813c8f66a57"
)
HASH = bytes.fromhex(
    "482243bdb078d844cc7a4e0d10a593cf70f92de26a8cb334f0d2b072bc02f9c3d0d48cc04a1b36e3ba0f15304eb960e0"
    "2fcb9120fc98c93e0b22788c58716957"
)
INIT_TX = bytes.fromhex("efa609e7f49b5f4190229935f6699955b7f9b6ead44c749b9268176f27b251cd")
INIT_RX = bytes.fromhex("4b04979d6b468db309390528efbb461ae6db6200c112ccfd8613379c5f858189")
HOLEPUNCH_SECRET = bytes.fromhex("52b7244178997adbae4dad57a4e3f6a788fe9a96827b78ad098b5621f7245a98")


def test_public_keys_match_the_vector():
    assert SERVER.public_key.hex() == "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c"
    assert CLIENT.public_key.hex() == "8139770ea87d175f56a35466c34c7ecccb8d8a91b4ee37a25df60f5b8fc9b394"


def test_initiator_is_byte_exact_with_node():
    initiator = Initiator(CLIENT, SERVER.public_key, ephemeral_seed=CLIENT_E)
    assert initiator.write_message1(PAYLOAD1) == MSG1
    assert initiator.read_message2(MSG2) == PAYLOAD2
    result = initiator.result
    assert result.is_initiator
    assert result.hash == HASH
    assert result.tx == INIT_TX
    assert result.rx == INIT_RX
    assert result.holepunch_secret == HOLEPUNCH_SECRET
    assert result.remote_public_key == SERVER.public_key


def test_responder_is_byte_exact_with_node():
    responder = Responder(SERVER, ephemeral_seed=SERVER_E)
    assert responder.read_message1(MSG1) == PAYLOAD1
    assert responder.remote_public_key == CLIENT.public_key
    assert responder.write_message2(PAYLOAD2) == MSG2
    result = responder.result
    assert not result.is_initiator
    assert (result.tx, result.rx, result.hash) == (INIT_RX, INIT_TX, HASH)
    assert result.holepunch_secret == HOLEPUNCH_SECRET


def test_vector_payloads_are_noise_payloads():
    payload = NoisePayload.decode(PAYLOAD1)
    assert payload.udx is not None and payload.secret_stream_version == 1
    assert NoisePayload.decode(PAYLOAD2).udx is not None


def test_random_ephemerals_agree_and_stream_ids_cross():
    initiator = Initiator(CLIENT, SERVER.public_key)
    responder = Responder(SERVER)
    assert responder.read_message1(initiator.write_message1(b"hello")) == b"hello"
    assert initiator.read_message2(responder.write_message2(b"")) == b""
    a, b = initiator.result, responder.result
    assert (a.tx, a.rx, a.hash) == (b.rx, b.tx, b.hash)
    assert a.stream_id(True) == b.stream_id(True) != a.stream_id(False)


def test_wrong_server_key_fails_at_the_server():
    other = KeyPair.from_seed(bytes([0x03]) * 32)
    msg1 = Initiator(CLIENT, other.public_key).write_message1(b"x")
    with pytest.raises(NoiseError, match="does not decrypt"):
        Responder(SERVER).read_message1(msg1)


def test_corrupted_message2_is_refused():
    initiator = Initiator(CLIENT, SERVER.public_key, ephemeral_seed=CLIENT_E)
    initiator.write_message1(PAYLOAD1)
    bad = bytearray(MSG2)
    bad[-1] ^= 1
    with pytest.raises(NoiseError, match="message 2 does not decrypt"):
        initiator.read_message2(bytes(bad))
    fresh = Initiator(CLIENT, SERVER.public_key)
    fresh.write_message1(b"")
    with pytest.raises(NoiseError, match="shorter"):
        fresh.read_message2(bytes(40))


def test_short_message1_is_refused():
    with pytest.raises(NoiseError, match="shorter"):
        Responder(SERVER).read_message1(bytes(50))


def test_repr_shows_no_secret():
    initiator = Initiator(CLIENT, SERVER.public_key, ephemeral_seed=CLIENT_E)
    initiator.write_message1(PAYLOAD1)
    initiator.read_message2(MSG2)
    text = repr(initiator.result)
    assert INIT_TX.hex() not in text and INIT_RX.hex() not in text
