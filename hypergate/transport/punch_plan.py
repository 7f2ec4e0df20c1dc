"""Which UDP hole punch to run, from both sides' firewall classes (sans-IO, no trio).

Each side tells the other (in FINISH / READY) how DHT nodes classified its punch socket
(`hypergate.wire.rendezvous.UdpPunchInfo`). Both then compute the same pairing from
their own point of view, as hyperdht's `Holepuncher._punch` does (OPEN counts as
CONSISTENT, except that nobody needs to punch towards an open side):

| us \\ them  | open               | consistent          | random              |
|------------|--------------------|---------------------|---------------------|
| open       | probe their address | probe their address | wait for theirs    |
| consistent | probe their address | probe their address | spray random ports |
| random     | probe their address | birthday: N sockets | none (relay)       |

- probe: one socket sends a `0x00` probe to every address of theirs every interval;
  through consistent NATs the probes cross once both sides have sent.
- spray: one socket sends probes to their host at random ports (no repeats) at a paced
  rate, until one hits a mapping their birthday sockets opened towards our address.
- birthday: N sockets each probe their address, so N mappings exist on our NAT for the
  spray of theirs to find.
- wait: we are reachable; their socket's probes get through and we answer them.
"""

from __future__ import annotations

import enum
import random

import attrs

from .. import limits
from ..wire.rendezvous import UdpPunchInfo

Endpoint = tuple[str, int]


class Strategy(enum.Enum):
    PROBE = "probe"
    SPRAY = "spray"
    BIRTHDAY = "birthday"
    WAIT = "wait"
    NONE = "none"


@attrs.frozen
class Plan:
    strategy: Strategy
    # Where each of our sockets sends probes (PROBE, BIRTHDAY); empty otherwise.
    targets: tuple[Endpoint, ...] = ()
    # How many sockets we punch from (BIRTHDAY: many; otherwise 1).
    sockets: int = 1
    # SPRAY: the host whose random ports we aim at.
    spray_host: str | None = None
    # Probes we may send in total (all sockets), and the pace.
    probes: int = 0
    interval_s: float = limits.UDP_PUNCH_PROBE_INTERVAL_S
    timeout_s: float = limits.UDP_PUNCH_TIMEOUT_S
    reason: str = ""

    @property
    def punches(self) -> bool:
        return self.strategy is not Strategy.NONE


def _usable(addresses) -> tuple[Endpoint, ...]:
    return tuple((h, p) for h, p in addresses if h and 0 < p < 65536)


def plan(mine: UdpPunchInfo, theirs: UdpPunchInfo) -> Plan:
    """Our half of the punch; the other side computes its half from the same two infos."""
    ours, other = mine.firewall, theirs.firewall
    targets = _usable(theirs.addresses)
    hosts = [h for h, _ in theirs.addresses if h]
    probe_count = int(limits.UDP_PUNCH_TIMEOUT_S / limits.UDP_PUNCH_PROBE_INTERVAL_S) * max(1, len(targets))
    probe = Plan(Strategy.PROBE, targets, probes=probe_count)
    if ours == "unknown":  # (not advertised either: both sides skip the punch)
        return Plan(Strategy.NONE, reason="our firewall is unknown")
    if other == "unknown":
        return Plan(Strategy.NONE, reason="their firewall is unknown")
    if other == "open":
        return probe if targets else Plan(Strategy.NONE, reason="no address to aim at")
    if ours == "open":
        return probe if other == "consistent" and targets else Plan(Strategy.WAIT)
    if ours == "consistent" and other == "consistent":
        return probe if targets else Plan(Strategy.NONE, reason="no address to aim at")
    if ours == "consistent" and other == "random":
        if not hosts:
            return Plan(Strategy.NONE, reason="no host to aim at")
        return Plan(
            Strategy.SPRAY, spray_host=hosts[0], probes=limits.UDP_PUNCH_SPRAY_PROBES,
            interval_s=limits.UDP_PUNCH_SPRAY_INTERVAL_S, timeout_s=limits.UDP_PUNCH_RANDOM_TIMEOUT_S,
        )
    if ours == "random" and other == "consistent":
        if not targets:
            return Plan(Strategy.NONE, reason="no address to aim at")
        sockets = limits.UDP_PUNCH_BIRTHDAY_SOCKETS
        rounds = int(limits.UDP_PUNCH_RANDOM_TIMEOUT_S / limits.UDP_PUNCH_BIRTHDAY_ROUND_S) + 1
        return Plan(
            Strategy.BIRTHDAY, targets, sockets=sockets, probes=sockets * len(targets) * rounds,
            interval_s=limits.UDP_PUNCH_BIRTHDAY_ROUND_S, timeout_s=limits.UDP_PUNCH_RANDOM_TIMEOUT_S,
        )
    return Plan(Strategy.NONE, reason="both NATs randomize ports")


def spray_ports(rng: random.Random, count: int, exclude: int = 0) -> list[int]:
    """`count` distinct random ports in UDP_PUNCH_SPRAY_PORTS (both ends included)."""
    low, high = limits.UDP_PUNCH_SPRAY_PORTS
    population = range(low, high + 1)
    ports = rng.sample(population, min(count + 1, len(population)))
    return [p for p in ports if p != exclude][:count]


def accepts(theirs: UdpPunchInfo, source: Endpoint) -> bool:
    """A datagram from `source` may be the other side's: its host is one they advertised
    (the port may differ: a random NAT's, or a consistent NAT that had to move the port)."""
    return any(source[0] == host for host, _ in theirs.addresses)
