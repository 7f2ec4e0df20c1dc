"""The Python DHT codecs against byte vectors made by the real npm packages.

tests/interop/gen_vectors.js encodes each case with compact-encoding, dht-rpc and
hyperdht; here the same input must encode to the identical bytes and decode back to it.
"""

from __future__ import annotations

import ipaddress

import pytest

from hypergate.dht import crypto
from hypergate.dht.encoding import Address, Decoder, Encoder
from hypergate.dht.nat import FirewallClassifier, NatSampler
from hypergate.dht.messages import (
    Announce,
    Handshake,
    Holepunch,
    LookupReply,
    MutableGetResponse,
    MutablePutRequest,
    MutableSignable,
    PeerRecord,
    PluginRequest,
    Request,
    Response,
)
from hypergate.dht.payloads import HolepunchInfo, HolepunchPayload, NoisePayload, RelayInfo, RelayThroughInfo, UdxInfo
from hypergate.dht.routing_table import RoutingTable, TableNode
from tests.interop.node_support import generate_vectors


@pytest.fixture(scope="module")
def vectors() -> dict:
    return generate_vectors()


def _bytes(value: str | None) -> bytes | None:
    return None if value is None else bytes.fromhex(value)


def _address(value: dict | None) -> Address | None:
    return None if value is None else Address(value["host"], value["port"])


def _addresses(values: list | None):
    return None if values is None else [_address(a) for a in values]


# --- primitives ------------------------------------------------------------------------

ENCODERS = {
    "uint": Encoder.uint,
    "int": Encoder.int,
    "uint8": Encoder.uint8,
    "uint16": Encoder.uint16,
    "uint24": Encoder.uint24,
    "uint32": Encoder.uint32,
    "uint64": Encoder.uint64,
    "bool": Encoder.bool,
    "buffer": lambda e, v: e.buffer(bytes.fromhex(v)),
    "string": Encoder.string,
    "fixed32": lambda e, v: e.fixed32(bytes.fromhex(v)),
    "fixed64": lambda e, v: e.fixed64(bytes.fromhex(v)),
    "array_uint": lambda e, v: e.array(v, Encoder.uint),
    "ipv4_address": lambda e, v: e.ipv4_address(_address(v)),
    "ipv6_address": lambda e, v: e.ipv6_address(_address(v)),
}

DECODERS = {
    "uint": Decoder.uint,
    "int": Decoder.int,
    "uint8": Decoder.uint8,
    "uint16": Decoder.uint16,
    "uint24": Decoder.uint24,
    "uint32": Decoder.uint32,
    "uint64": Decoder.uint64,
    "bool": Decoder.bool,
    "buffer": lambda d: d.buffer().hex(),
    "string": Decoder.string,
    "fixed32": lambda d: d.fixed32().hex(),
    "fixed64": lambda d: d.fixed64().hex(),
    "array_uint": lambda d: d.array(Decoder.uint),
    "ipv4_address": lambda d: _json_address(d.ipv4_address()),
    "ipv6_address": lambda d: _json_address(d.ipv6_address()),
}


def _json_address(address: Address) -> dict:
    return {"host": address.host, "port": address.port}


def _normalise(codec: str, value):
    if codec == "ipv6_address":
        return {"host": str(ipaddress.IPv6Address(value["host"])), "port": value["port"]}
    return value


def test_primitives_match_compact_encoding(vectors):
    assert len(vectors["primitives"]) > 30
    for case in vectors["primitives"]:
        encoder = Encoder()
        ENCODERS[case["codec"]](encoder, case["value"])
        assert encoder.bytes().hex() == case["hex"], case
        decoder = Decoder(bytes.fromhex(case["hex"]))
        decoded = DECODERS[case["codec"]](decoder)
        assert _normalise(case["codec"], decoded) == _normalise(case["codec"], case["value"]), case
        assert decoder.at_end()


# --- hyperdht message bodies -------------------------------------------------------------


def _peer(v: dict | None) -> PeerRecord | None:
    if v is None:
        return None
    return PeerRecord(bytes.fromhex(v["publicKey"]), _addresses(v["relayAddresses"]))


def _noise_payload(v: dict) -> NoisePayload:
    hp = v["holepunch"]
    udx = v["udx"]
    rt = v["relayThrough"]
    return NoisePayload(
        version=v["version"],
        error=v["error"],
        firewall=v["firewall"],
        holepunch=None
        if hp is None
        else HolepunchInfo(
            hp["id"], [RelayInfo(_address(r["relayAddress"]), _address(r["peerAddress"])) for r in hp["relays"]]
        ),
        addresses4=_addresses(v["addresses4"]),
        addresses6=[Address(str(ipaddress.IPv6Address(a["host"])), a["port"]) for a in v["addresses6"]],
        udx=None if udx is None else UdxInfo(id=udx["id"], seq=udx["seq"], reusable_socket=udx["reusableSocket"]),
        secret_stream_version=None if v["secretStream"] is None else 1,
        relay_through=None if rt is None else RelayThroughInfo(bytes.fromhex(rt["publicKey"]), bytes.fromhex(rt["token"])),
        relay_addresses=_addresses(v["relayAddresses"]),
    )


BUILDERS = {
    "handshake": lambda v: Handshake(v["mode"], bytes.fromhex(v["noise"]), _address(v["peerAddress"]), _address(v["relayAddress"])),
    "holepunch": lambda v: Holepunch(v["mode"], v["id"], bytes.fromhex(v["payload"]), _address(v["peerAddress"])),
    "peer": _peer,
    "announce": lambda v: Announce(_peer(v["peer"]), _bytes(v["refresh"]), _bytes(v["signature"]), v["bump"]),
    "mutableSignable": lambda v: MutableSignable(v["seq"], bytes.fromhex(v["value"])),
    "mutablePutRequest": lambda v: MutablePutRequest(
        bytes.fromhex(v["publicKey"]), v["seq"], bytes.fromhex(v["value"]), bytes.fromhex(v["signature"])
    ),
    "mutableGetResponse": lambda v: MutableGetResponse(v["seq"], bytes.fromhex(v["value"]), bytes.fromhex(v["signature"])),
    "pluginRequest": lambda v: PluginRequest(v["plugin"], v["version"], v["command"], _bytes(v["value"])),
    "holepunchPayload": lambda v: HolepunchPayload(
        error=v["error"],
        firewall=v["firewall"],
        round=v["round"],
        connected=v["connected"],
        punching=v["punching"],
        addresses=_addresses(v["addresses"]),
        remote_address=_address(v["remoteAddress"]),
        token=_bytes(v["token"]),
        remote_token=_bytes(v["remoteToken"]),
    ),
    "noisePayload": _noise_payload,
    "lookupRawReply": lambda v: LookupReply([_peer(p) for p in v["peers"]], v["bump"]),
}
CLASSES = {
    "handshake": Handshake,
    "holepunch": Holepunch,
    "peer": PeerRecord,
    "announce": Announce,
    "mutableSignable": MutableSignable,
    "mutablePutRequest": MutablePutRequest,
    "mutableGetResponse": MutableGetResponse,
    "pluginRequest": PluginRequest,
    "holepunchPayload": HolepunchPayload,
    "noisePayload": NoisePayload,
    "lookupRawReply": LookupReply,
}


def test_every_hyperdht_message_matches_node(vectors):
    seen_types = set()
    for case in vectors["messages"]:
        message = BUILDERS[case["type"]](case["value"])
        assert message.encode().hex() == case["hex"], case["type"]
        assert CLASSES[case["type"]].decode(bytes.fromhex(case["hex"])) == message, case["type"]
        seen_types.add(case["type"])
    assert seen_types == set(BUILDERS)


def test_documented_noise_payload_and_announce_bytes_agree_with_node(vectors):
    # The two examples HYPERSWARM-WIRE.md 3.3 records from a capture.
    by_hex = {case["hex"] for case in vectors["messages"]}
    assert "011a000001c0a8010549c20100fe7856341200" + "01" in by_hex
    assert "05" + "22" * 32 + "00" + "33" * 64 in by_hex


def test_lookup_reply_without_bump_from_old_nodes_decodes():
    record = PeerRecord(b"\x22" * 32, [Address("10.0.0.1", 5000)])
    old_style = LookupReply([record], 0).encode()[:-1]  # hyperdht 6.5 wrote no bump
    assert LookupReply.decode(old_style) == LookupReply([record], 0)


# --- dht-rpc datagrams -------------------------------------------------------------------


def test_requests_match_dht_rpc_io(vectors):
    requests = [case for case in vectors["rpc"] if case["kind"] == "request"]
    assert len(requests) >= 5
    for case in requests:
        v = case["value"]
        request = Request(
            tid=v["tid"],
            to=_address(v["to"]),
            command=v["command"],
            internal=v["internal"],
            id=_bytes(v["id"]),
            token=_bytes(v["token"]),
            target=_bytes(v["target"]),
            value=_bytes(v["value"]),
        )
        assert request.encode().hex() == case["hex"], v
        assert Request.decode(bytes.fromhex(case["hex"])) == request


def test_responses_match_dht_rpc_io(vectors):
    responses = [case for case in vectors["rpc"] if case["kind"] == "response"]
    assert len(responses) >= 5
    for case in responses:
        v = case["value"]
        response = Response(
            tid=v["tid"],
            to=_address(v["to"]),
            id=_bytes(v["id"]),
            token=_bytes(v["token"]),
            closer_nodes=_addresses(v["closerNodes"]),
            error=v["error"],
            value=_bytes(v["value"]),
        )
        assert response.encode().hex() == case["hex"], v
        assert Response.decode(bytes.fromhex(case["hex"])) == response


# --- ids, namespaces, signatures, tokens -------------------------------------------------


def test_node_ids_and_namespaces_match(vectors):
    for case in vectors["crypto"]["nodeIds"]:
        assert crypto.node_id(Address(case["host"], case["port"])).hex() == case["id"]
    ns = vectors["crypto"]["namespaces"]
    assert crypto.NS_ANNOUNCE.hex() == ns["ANNOUNCE"]
    assert crypto.NS_UNANNOUNCE.hex() == ns["UNANNOUNCE"]
    assert crypto.NS_MUTABLE_PUT.hex() == ns["MUTABLE_PUT"]
    assert crypto.NS_PEER_HANDSHAKE.hex() == ns["PEER_HANDSHAKE"]
    assert crypto.NS_PEER_HOLEPUNCH.hex() == ns["PEER_HOLEPUNCH"]
    assert crypto.NS_PLUGIN.hex() == ns["PLUGIN"]


def test_announce_signatures_are_byte_identical_to_hyperdht(vectors):
    ann = vectors["crypto"]["announce"]
    key_pair = crypto.KeyPair.from_seed(bytes.fromhex(ann["seed"]))
    assert key_pair.public_key.hex() == ann["publicKey"]
    assert crypto.hash32(key_pair.public_key).hex() == ann["target"]
    target, receiver, token = (bytes.fromhex(ann[k]) for k in ("target", "receiverId", "token"))
    for case in ann["cases"]:
        peer = PeerRecord(key_pair.public_key, _addresses(case["relayAddresses"]))
        refresh = _bytes(case["refresh"])
        signature = crypto.sign_announce(key_pair, target, receiver, token, peer, refresh)
        assert signature.hex() == case["announceSignature"]
        assert crypto.sign_unannounce(key_pair, target, receiver, token, peer, refresh).hex() == case["unannounceSignature"]
        signable = crypto.announce_signable(crypto.NS_ANNOUNCE, target, receiver, token, peer, refresh)
        assert crypto.verify(key_pair.public_key, signable, signature)
        assert not crypto.verify(key_pair.public_key, signable, bytes(64))


def test_mutable_signature_matches(vectors):
    mut = vectors["crypto"]["mutable"]
    key_pair = crypto.KeyPair.from_seed(bytes.fromhex(mut["seed"]))
    signable = crypto.mutable_signable(mut["seq"], bytes.fromhex(mut["value"]))
    assert key_pair.sign(signable).hex() == mut["signature"]


def test_tokens_and_their_rotation_match_dht_rpc(vectors):
    tok = vectors["crypto"]["tokens"]
    secrets = crypto.TokenSecrets(now=0.0, secrets=(bytes.fromhex(tok["secret0"]), bytes.fromhex(tok["secret1"])))
    now = 0.0
    for round_ in tok["rounds"]:
        assert secrets.token(round_["host"], 0).hex() == round_["token0"]
        assert secrets.token(round_["host"], 1).hex() == round_["token1"]
        assert secrets.is_valid(round_["host"], bytes.fromhex(round_["token0"]))
        now += crypto.TOKEN_ROTATE_INTERVAL_S
        secrets.advance(now)


# --- routing table -----------------------------------------------------------------------


def test_routing_table_accepts_and_orders_like_kademlia_routing_table(vectors):
    tv = vectors["table"]
    table = RoutingTable(bytes.fromhex(tv["localId"]), k=tv["k"])
    for i, entry in enumerate(tv["added"]):
        node = TableNode(bytes.fromhex(entry["id"]), Address("10.0.0.1", 1000 + i))
        assert table.add(node) == entry["accepted"], entry
    assert len(table) == tv["size"]
    for case in tv["closest"]:
        got = [n.id.hex() for n in table.closest(bytes.fromhex(case["target"]))]
        assert got == case["ids"]


def test_nat_sampler_settles_exactly_like_nat_sampler(vectors):
    assert len(vectors["nat"]) >= 4
    for sequence in vectors["nat"]:
        sampler = NatSampler()
        for step in sequence:
            assert sampler.add(step["host"], step["port"]) == step["hits"], step
            assert (sampler.host, sampler.port) == (step["resultHost"], step["resultPort"]), step


def test_firewall_classification_matches_hyperdht_nat(vectors):
    assert len(vectors["firewall"]) >= 6
    for case in vectors["firewall"]:
        classifier = FirewallClassifier(case["firewalled"])
        for step in case["steps"]:
            classifier.add(tuple(step["seenAs"]), tuple(step["answeredBy"]))
            assert classifier.firewall == step["firewall"], (case, step)
            expected = None if step["addresses"] is None else [tuple(a) for a in step["addresses"]]
            assert classifier.addresses == expected, (case, step)
