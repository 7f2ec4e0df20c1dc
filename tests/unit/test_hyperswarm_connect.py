"""Where the UDX stream goes after the handshake (hyperdht connect.js holepunch() step 1)."""

from __future__ import annotations

from hypergate.dht.encoding import Address
from hypergate.dht.messages import Firewall
from hypergate.dht.payloads import HolepunchInfo, NoisePayload, RelayInfo
from hypergate.hyperswarm.connect import choose_udx_address, is_bogon

RELAY = Address("198.51.100.7", 49737)
SEEN = Address("203.0.113.9", 40000)  # the server as the relay saw it
PUBLIC = Address("8.8.4.4", 50000)
LAN = Address("192.168.1.5", 50000)
PUNCH = HolepunchInfo(1, [RelayInfo(RELAY, SEEN)])


def test_bogons():
    assert is_bogon("127.0.0.1") and is_bogon("10.1.2.3") and is_bogon("192.168.0.1") and is_bogon("100.64.0.1")
    assert is_bogon("not an ip")
    assert not is_bogon("8.8.4.4")


def test_direct_handshake_goes_to_the_relay_which_is_the_server():
    payload = NoisePayload(firewall=Firewall.UNKNOWN, holepunch=PUNCH, addresses4=[PUBLIC])
    assert choose_udx_address(payload, RELAY, RELAY) == (RELAY, False)


def test_open_server_first_public_address():
    payload = NoisePayload(firewall=Firewall.OPEN, addresses4=[LAN, PUBLIC])
    assert choose_udx_address(payload, RELAY, SEEN) == (PUBLIC, False)


def test_open_server_with_only_private_addresses_goes_to_the_seen_address():
    payload = NoisePayload(firewall=Firewall.OPEN, addresses4=[LAN])
    assert choose_udx_address(payload, RELAY, SEEN) == (SEEN, False)


def test_relayed_without_holepunch_relays_first_public_address():
    payload = NoisePayload(firewall=Firewall.UNKNOWN, holepunch=HolepunchInfo(1, []), addresses4=[PUBLIC])
    assert choose_udx_address(payload, RELAY, SEEN) == (PUBLIC, False)


def test_firewalled_server_would_need_a_punch():
    payload = NoisePayload(firewall=Firewall.UNKNOWN, holepunch=PUNCH, addresses4=[PUBLIC])
    assert choose_udx_address(payload, RELAY, SEEN) == (SEEN, True)
