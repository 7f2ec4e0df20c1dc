"""Relays offered in peers' hellos: kept when sane, announced to listeners once, bounded."""

from hypergate import limits
from hypergate.crypto.keys import RouterKeys
from hypergate.peer import PeerConnection
from hypergate.router import Router
from hypergate.wire.messages import PROTOCOL_VERSION, Hello, decode_message, encode_message


def make_router() -> Router:
    return Router(RouterKeys.from_secret(b"s" * 32), hooks=None, provider=True, gateway=False)


def peer_offering(url: str) -> PeerConnection:
    peer = PeerConnection("10.0.0.1:1", initiator=False)
    peer.hello = Hello(type="hello", version=PROTOCOL_VERSION, gateway=True, relay=url)
    return peer


def test_hello_carries_the_offer_and_old_hellos_still_parse():
    hello = Hello(type="hello", version=PROTOCOL_VERSION, relay="wss://r.example/x")
    assert decode_message(encode_message(hello)) == hello
    assert decode_message(b'{"type":"hello","version":1}').relay == ""


def test_offered_relays_are_kept_once_and_listeners_hear_each_once():
    router = make_router()
    heard = []
    router.relay_listeners.append(heard.append)
    for url in ("ws://203.0.113.5:49740/", "ws://203.0.113.5:49740/", "wss://r.example/h"):
        router._note_offered_relay(peer_offering(url))
    assert router.offered_relays == ["ws://203.0.113.5:49740/", "wss://r.example/h"]
    assert heard == router.offered_relays


def test_offers_that_are_not_websocket_urls_or_too_many_are_ignored():
    router = make_router()
    router._note_offered_relay(peer_offering("http://203.0.113.5/"))
    router._note_offered_relay(peer_offering("ws://" + "a" * limits.MAX_RELAY_URL_LENGTH))
    assert router.offered_relays == []
    for index in range(limits.MAX_OFFERED_RELAYS + 3):
        router._note_offered_relay(peer_offering(f"ws://203.0.113.{index}:1/"))
    assert len(router.offered_relays) == limits.MAX_OFFERED_RELAYS


def test_our_own_offer_is_not_learned_back():
    router = make_router()
    router.offer_relay("ws://198.51.100.1:49740/")
    assert router.hello.relay == "ws://198.51.100.1:49740/"
    router._note_offered_relay(peer_offering("ws://198.51.100.1:49740/"))
    assert router.offered_relays == []
