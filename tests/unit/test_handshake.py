"""Noise XXpsk3 link handshake (sans-IO): who gets in, who does not, and why."""

import attrs
import pytest

from hypergate.crypto.handshake import FRAME_OVERHEAD, NoiseHandshake, WrongRouterSecret
from hypergate.crypto.keys import LinkIdentity, RouterKeys, new_router_secret, parse_router_secret
from hypergate.errors import ConfigError, HandshakeError

SECRET = bytes.fromhex("11" * 32)


def pair(init_keys, resp_keys):
    a, b = LinkIdentity.generate(), LinkIdentity.generate()
    return (
        NoiseHandshake(initiator=True, identity=a, router=init_keys),
        NoiseHandshake(initiator=False, identity=b, router=resp_keys),
        a,
        b,
    )


def run(initiator, responder):
    """Exchange messages until done; returns the three bodies that crossed."""
    bodies = []
    for sender, receiver in [(initiator, responder), (responder, initiator), (initiator, responder)]:
        body = sender.next_outgoing()[FRAME_OVERHEAD:]
        bodies.append(body)
        receiver.receive(body)
    return bodies


def test_same_secret_authenticates_both_statics_and_agrees_on_keys():
    keys = RouterKeys.from_secret(SECRET)
    i, r, a, b = pair(keys, keys)
    run(i, r)
    assert i.result.remote_static == b.noise_public
    assert r.result.remote_static == a.noise_public
    assert i.result.send_key == r.result.recv_key and i.result.recv_key == r.result.send_key
    assert i.result.handshake_hash == r.result.handshake_hash


def test_different_secret_is_refused_at_first_message_with_a_clear_reason():
    i, r, _, _ = pair(RouterKeys.from_secret(SECRET), RouterKeys.from_secret(bytes(32)))
    with pytest.raises(WrongRouterSecret, match="different router secret"):
        r.receive(i.next_outgoing()[FRAME_OVERHEAD:])


def test_peer_that_fakes_the_topic_but_lacks_the_psk_fails_at_message_three():
    real = RouterKeys.from_secret(SECRET)
    impostor = attrs.evolve(real, link_psk=bytes(32))  # knows the public topic only
    i, r, _, _ = pair(impostor, real)
    r.receive(i.next_outgoing()[FRAME_OVERHEAD:])
    i.receive(r.next_outgoing()[FRAME_OVERHEAD:])
    with pytest.raises(WrongRouterSecret, match="does not hold this router secret"):
        r.receive(i.next_outgoing()[FRAME_OVERHEAD:])
    assert r.result is None


def test_replayed_handshake_messages_do_not_complete_a_new_handshake():
    keys = RouterKeys.from_secret(SECRET)
    first_i, first_r, _, _ = pair(keys, keys)
    bodies = run(first_i, first_r)
    # An eavesdropper replays the initiator's messages to a fresh responder.
    fresh = NoiseHandshake(initiator=False, identity=LinkIdentity.generate(), router=keys)
    fresh.receive(bodies[0])
    fresh.next_outgoing()
    with pytest.raises(HandshakeError):
        fresh.receive(bodies[2])
    assert fresh.result is None


@pytest.mark.parametrize("cut", [0, 1, 31, 40])
def test_truncated_second_message_is_a_handshake_error(cut):
    keys = RouterKeys.from_secret(SECRET)
    i, r, _, _ = pair(keys, keys)
    r.receive(i.next_outgoing()[FRAME_OVERHEAD:])
    body = r.next_outgoing()[FRAME_OVERHEAD:]
    with pytest.raises(HandshakeError):
        i.receive(body[:cut])


def test_out_of_turn_calls_are_refused():
    keys = RouterKeys.from_secret(SECRET)
    i, r, _, _ = pair(keys, keys)
    with pytest.raises(HandshakeError):
        r.next_outgoing()
    with pytest.raises(HandshakeError):
        i.receive(b"x" * 48)


def test_router_secret_parsing_and_repr_hide_secrets():
    secret = new_router_secret()
    assert len(secret) == 64 and parse_router_secret(secret).hex() == secret
    for bad in ["zz" * 32, "ab" * 31, ""]:
        with pytest.raises(ConfigError) as info:
            parse_router_secret(bad)
        assert bad not in str(info.value) or bad == ""
    keys = RouterKeys.from_secret(SECRET)
    assert keys.link_psk.hex() not in repr(keys) and SECRET.hex() not in repr(keys)
