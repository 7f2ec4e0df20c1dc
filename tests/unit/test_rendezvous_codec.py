"""The envelope our peers put in relayed PEER_HANDSHAKE messages (sans-IO)."""

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hypergate.wire import rendezvous as rv


@given(st.sampled_from(list(rv.Step)), st.binary(min_size=16, max_size=16), st.binary(max_size=rv.MAX_BODY))
def test_round_trip(step, session_id, body):
    message = rv.RendezvousMessage(step, session_id, body)
    assert rv.decode(message.encode()) == message


@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_the_codec_error(data):
    try:
        rv.decode(data)
    except rv.RendezvousError:
        pass


def test_foreign_noise_and_unknown_steps_are_refused():
    with pytest.raises(rv.RendezvousError, match="not a hypergate"):
        rv.decode(os.urandom(64))  # e.g. a hyperdht IK message 1
    with pytest.raises(rv.RendezvousError, match="unknown rendezvous step 9"):
        rv.decode(rv.MAGIC + bytes([9]) + bytes(16))
    with pytest.raises(ValueError):
        rv.RendezvousMessage(rv.Step.OPEN, bytes(16), bytes(rv.MAX_BODY + 1)).encode()


def test_address_lists_are_bounded_and_validated():
    addresses = [("127.0.0.1", 4000), ("::1", 4001)]
    assert rv.decode_addresses(rv.encode_addresses(addresses)) == addresses
    assert rv.decode_addresses(rv.encode_addresses([("h", 0), ("h", 70000), ("ok", 1)])) == [("ok", 1)]
    assert len(rv.decode_addresses(rv.encode_addresses([("h", 1)] * 100))) == 16
    for bad in [b"{", b"[]", b'{"tcp": [[1]]}', b'{"tcp": [["h", "x"]]}']:
        with pytest.raises(rv.RendezvousError):
            rv.decode_addresses(bad)


def test_relayed_messages_stay_well_under_the_relay_size_limit():
    from hypergate.crypto.handshake import FRAME_OVERHEAD, NoiseHandshake
    from hypergate.crypto.keys import LinkIdentity, RouterKeys

    keys = RouterKeys.from_secret(bytes(32))
    client = NoiseHandshake(initiator=True, identity=LinkIdentity.generate(), router=keys)
    server = NoiseHandshake(initiator=False, identity=LinkIdentity.generate(), router=keys)
    sizes = []
    for sender, receiver in [(client, server), (server, client), (client, server)]:
        body = sender.next_outgoing()[FRAME_OVERHEAD:]
        sizes.append(len(rv.RendezvousMessage(rv.Step.OPEN, bytes(16), body).encode()))
        receiver.receive(body)
    assert max(sizes) < 200  # Node relays forward up to 2048 bytes


def test_finish_and_ready_carry_udp_punch_info():
    udp = rv.UdpPunchInfo("consistent", (("203.0.113.1", 5000), ("203.0.113.1", 5001)), 0xDEADBEEF)
    finish = rv.decode_finish(rv.encode_finish(b"m3" * 40, ("203.0.113.1", 6000), udp))
    assert finish == rv.FinishInfo(b"m3" * 40, ("203.0.113.1", 6000), udp)
    assert rv.decode_finish(rv.encode_finish(b"m3", None)) == rv.FinishInfo(b"m3", None, None)
    random_nat = rv.UdpPunchInfo("random", (("192.0.2.9", 0),), 1)
    ready = rv.ReadyInfo([("192.0.2.9", 4000)], None, "ws://relay/", random_nat)
    assert rv.decode_ready(ready.encode()) == ready
    assert rv.decode_ready(rv.ReadyInfo([("h", 1)]).encode()).udp is None
    # Four addresses at most; the whole message stays well under the relay's limit.
    many = rv.UdpPunchInfo("consistent", tuple(("203.0.113.1", 5000 + i) for i in range(10)), 7)
    body = rv.encode_finish(bytes(200), ("203.0.113.1", 6000), many)
    assert len(rv.decode_finish(body).udp.addresses) == rv.MAX_UDP_ADDRESSES
    assert len(body) < rv.MAX_BODY


@pytest.mark.parametrize("udp", [
    {"fw": "sideways", "addrs": [], "id": 1},
    {"fw": "open", "addrs": [["h", 70000]], "id": 1},
    {"fw": "open", "addrs": [["", 1]], "id": 1},
    {"fw": "open", "addrs": [], "id": 0},
    {"fw": "open", "addrs": [], "id": 2**32},
    {"fw": "open", "addrs": [], "id": "1"},
    {"fw": "open", "addrs": []},
    {"fw": "open", "addrs": [[1]], "id": 1},
    "consistent",
])
def test_bad_udp_punch_info_is_refused(udp):
    import json

    with pytest.raises(rv.RendezvousError):
        rv.decode_finish(b"\x00\x01x" + json.dumps({"udp": udp}).encode())
    with pytest.raises(rv.RendezvousError):
        rv.decode_ready(json.dumps({"tcp": [], "udp": udp}).encode())


@given(st.binary(max_size=300))
def test_finish_bodies_raise_only_the_codec_error(data):
    try:
        rv.decode_finish(data)
    except rv.RendezvousError:
        pass
