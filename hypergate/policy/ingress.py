"""Ingress policy: which client IPs may use a provider's services, and how fast.

A policy document is `{"defaults": Rule, "ips": {"<ip | cidr | *>": Rule}}` (the
original's format). `--ingressPolicy` is repeatable; its sources (JSON text, path or URL)
are deep-merged left to right: objects merge, arrays and scalars replace, and
prototype-pollution keys (`__proto__`, `constructor`, `prototype`) are ignored.

How a client is decided (`IngressPolicy.decide`):
- `ips` entries are tried in document order. An entry matches when the client IP equals
  the address, lies in the CIDR, or the key is `*`; it has not expired (`expireAt`, ms
  since the epoch, is absent or in the future); and its port/protocol conditions
  (`onlyPorts`, `excludePorts`, `onlyProtocols`, `excludeProtocols`) accept the gate.
  The first such entry wins.
- Otherwise `defaults` applies, under the same expiry and conditions.
- Otherwise the client is allowed without limit.
- The winning entry inherits `allow`, `bandwidthLimit` and `labels` from unexpired
  `defaults` when it does not set them; `allow` is true when neither sets it. So
  `{"bandwidthLimit": null, "labels": ["trusted"]}` lets that IP in without a limit even
  when defaults set one (the original README's example; the original code denied it).
  Conditions, `expireAt` and `desc` belong to their entry and are not inherited.
- IPv4 and IPv6 never match each other; `::ffff:a.b.c.d` counts as the IPv4 address,
  both as a client and as a key; an IPv6 zone (`%eth0`) is ignored.

No trio here: loading is blocking (callers use a thread), matching takes the time as a
parameter. `PolicySource` (in `hypergate.policy.source`) is the trio driver that
re-reads URL sources.
"""

from __future__ import annotations

import functools
import ipaddress
import math
from collections.abc import Sequence
from typing import Any, Literal

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn

from ..config import describe_source, describe_structure_error, parse_json, read_source_text
from ..errors import ConfigError, ProtocolError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Protocol = Literal["tcp", "udp"]
PortRange = tuple[int, int]

# Keys a JavaScript deep merge must skip; we skip them too so a document means the same
# thing to both implementations.
_IGNORED_KEYS = frozenset({"__proto__", "constructor", "prototype"})


class _Unset:
    """`bandwidthLimit` absent (inherit from defaults), as opposed to null (no limit)."""

    _instance: _Unset | None = None

    def __new__(cls) -> _Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()


def _positive_rate(instance: Any, attribute: attrs.Attribute, value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ValueError(f"{attribute.name} must be a positive number of Mbit/s, got {value!r}")


@attrs.frozen
class BandwidthLimit:
    """`mbps` sustained, `burstMbps` (default `mbps`) worth of one second as burst."""

    mbps: float = attrs.field(validator=_positive_rate)
    burstMbps: float | None = attrs.field(default=None, validator=_positive_rate)

    @property
    def rate_bytes_per_s(self) -> float:
        return self.mbps * 1e6 / 8

    @property
    def burst_bytes(self) -> float:
        return (self.burstMbps if self.burstMbps is not None else self.mbps) * 1e6 / 8


def _port_range(instance: Any, attribute: attrs.Attribute, value: PortRange | None) -> None:
    if value is None:
        return
    lo, hi = value
    if not (0 <= lo <= 65535 and 0 <= hi <= 65535):
        raise ValueError(f"{attribute.name} ports must be 0-65535, got {list(value)!r}")
    if lo > hi:
        raise ValueError(f"{attribute.name} must be [low, high] with low <= high, got {list(value)!r}")


@attrs.frozen
class Rule:
    """One policy rule. Fields left out are None (`bandwidthLimit`: UNSET)."""

    allow: bool | None = None
    bandwidthLimit: BandwidthLimit | None = UNSET
    expireAt: float | None = None
    labels: tuple[str, ...] | None = None
    onlyPorts: PortRange | None = attrs.field(default=None, validator=_port_range)
    excludePorts: PortRange | None = attrs.field(default=None, validator=_port_range)
    onlyProtocols: tuple[Protocol, ...] | None = None
    excludeProtocols: tuple[Protocol, ...] | None = None
    desc: str | None = None

    def expired(self, now_ms: float) -> bool:
        return self.expireAt is not None and self.expireAt <= now_ms

    def applies_to(self, gate_port: int, protocol: str) -> bool:
        if self.onlyPorts is not None and not self.onlyPorts[0] <= gate_port <= self.onlyPorts[1]:
            return False
        if self.excludePorts is not None and self.excludePorts[0] <= gate_port <= self.excludePorts[1]:
            return False
        if self.onlyProtocols is not None and protocol not in self.onlyProtocols:
            return False
        if self.excludeProtocols is not None and protocol in self.excludeProtocols:
            return False
        return True


@attrs.frozen
class _PolicyDocument:
    defaults: Rule | None = None
    ips: dict[str, Rule] = attrs.field(factory=dict)


@attrs.frozen
class Decision:
    """What to do with one new client: `bandwidth` None means no limit."""

    allowed: bool
    reason: str
    bandwidth: BandwidthLimit | None = None
    labels: tuple[str, ...] = ()


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True)

    def strict_bool(value: Any, _: type) -> bool:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        return value

    def strict_int(value: Any, _: type) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {value!r}")
        return value

    def strict_number(value: Any, _: type) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"expected a number, got {value!r}")
        return value  # an int stays an int, so the wire form reads as it was written

    def strict_str(value: Any, _: type) -> str:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {value!r}")
        return value

    def port_range(value: Any, _: type) -> PortRange:
        if (
            not isinstance(value, list)
            or len(value) != 2
            or not all(isinstance(p, int) and not isinstance(p, bool) for p in value)
        ):
            raise ValueError(f"expected [low, high] port numbers, got {value!r}")
        return (value[0], value[1])

    def string_list(value: Any, _: type) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"expected an array of strings, got {value!r}")
        return tuple(value)

    def protocol_list(value: Any, _: type) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(v in ("tcp", "udp") for v in value):
            raise ValueError(f'expected an array of "tcp"/"udp", got {value!r}')
        return tuple(value)

    conv.register_structure_hook(bool, strict_bool)
    conv.register_structure_hook(int, strict_int)
    conv.register_structure_hook(float, strict_number)
    conv.register_structure_hook(str, strict_str)
    # Generic aliases are not classes, so these dispatch on equality with the alias.
    for alias, hook in (
        (PortRange, port_range),
        (tuple[str, ...], string_list),
        (tuple[Protocol, ...], protocol_list),
    ):
        conv.register_structure_hook_func(lambda t, alias=alias: t == alias, hook)
    for cls in (BandwidthLimit, Rule, _PolicyDocument):
        conv.register_structure_hook(
            cls, make_dict_structure_fn(cls, conv, _cattrs_forbid_extra_keys=True)
        )
    return conv


_converter = _make_converter()


def deep_merge(target: dict[str, Any], source: dict[str, Any]) -> dict[str, Any]:
    """A new dict: `source` merged into `target` (objects merge; arrays, scalars, null replace)."""
    merged = dict(target)
    for key, value in source.items():
        if key in _IGNORED_KEYS:
            continue
        if isinstance(value, dict):
            base = merged.get(key)
            merged[key] = deep_merge(base if isinstance(base, dict) else {}, value)
        else:
            merged[key] = value
    return merged


@functools.lru_cache(maxsize=4096)  # (every connection parses its client's address 2-3 times)
def normalize_ip(text: str) -> IPAddress | None:
    """The address `text` names, IPv4-mapped IPv6 as IPv4, zone dropped; None if not an IP."""
    try:
        address = ipaddress.ip_address(text.strip().split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _parse_ip_key(key: str) -> IPNetwork | None:
    """The network an `ips` key names (None for `*`); ValueError if it names none."""
    key = key.strip()
    if key == "*":
        return None
    base, slash, prefix = key.partition("/")
    address = normalize_ip(base)
    if address is None:
        raise ValueError("not an IP address, CIDR or '*'")
    if not slash:
        return ipaddress.ip_network(address)
    if not prefix.isdigit():
        raise ValueError("CIDR prefix must be a number")
    prefix_len = int(prefix)
    mapped = address.version == 4 and ":" in base
    if mapped:
        # ::ffff:10.0.0.0/104 is written in IPv6 prefix bits; count them as IPv4 bits.
        prefix_len -= 96
    if not 0 <= prefix_len <= address.max_prefixlen:
        raise ValueError(f"CIDR prefix /{prefix} out of range for IPv{address.version}")
    # Host bits set (10.0.0.1/8) are accepted, as Node's BlockList accepts them.
    return ipaddress.ip_network(f"{address}/{prefix_len}", strict=False)


def _unstructure_rule(rule: Rule) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field in attrs.fields(Rule):
        value = getattr(rule, field.name)
        if value is UNSET or (value is None and field.name != "bandwidthLimit"):
            continue
        if isinstance(value, BandwidthLimit):
            value = {k: v for k, v in attrs.asdict(value).items() if v is not None}
        elif isinstance(value, tuple):
            value = list(value)
        out[field.name] = value
    return out


@attrs.frozen
class IngressPolicy:
    """A validated policy. Build with `load_policy`, `IngressPolicy.from_document` or
    `IngressPolicy.from_wire`; ask with `decide`."""

    defaults: Rule | None = None
    entries: tuple[tuple[str, IPNetwork | None, Rule], ...] = ()

    @classmethod
    def empty(cls) -> IngressPolicy:
        return cls()

    @classmethod
    def from_document(cls, data: Any, source: str) -> IngressPolicy:
        """Validate one (merged) JSON document; ConfigError names source, key and problem."""
        if not isinstance(data, dict):
            raise ConfigError(f'{source}: expected an object {{"defaults": ..., "ips": ...}}')
        data = deep_merge({}, data)  # drops __proto__ & co. at every level
        try:
            document = _converter.structure(data, _PolicyDocument)
        except Exception as exc:  # cattrs wraps validator errors; flatten them to one line
            raise ConfigError(describe_structure_error(exc, source)) from None
        entries = []
        for key, rule in document.ips.items():
            try:
                network = _parse_ip_key(key)
            except ValueError as exc:
                raise ConfigError(f"{source}: $.ips[{key!r}]: {exc}") from None
            entries.append((key, network, rule))
        return cls(defaults=document.defaults, entries=tuple(entries))

    def to_wire(self) -> dict[str, Any]:
        """The policy as a JSON-able document (what a provider sends with its routes)."""
        doc: dict[str, Any] = {}
        if self.defaults is not None:
            doc["defaults"] = _unstructure_rule(self.defaults)
        if self.entries:
            doc["ips"] = {key: _unstructure_rule(rule) for key, _, rule in self.entries}
        return doc

    @classmethod
    def from_wire(cls, data: Any) -> IngressPolicy:
        """A policy received from a peer; a malformed one is that peer's protocol error."""
        if data is None:
            return cls.empty()
        try:
            return cls.from_document(data, "ingress policy from peer")
        except ConfigError as exc:
            raise ProtocolError(str(exc)) from None

    def decide(self, client_ip: str, gate_port: int, protocol: str, now_ms: float) -> Decision:
        address = normalize_ip(client_ip)
        defaults = self.defaults if self.defaults and not self.defaults.expired(now_ms) else None
        for key, network, rule in self.entries:
            if network is not None and (address is None or address not in network):
                continue
            if rule.expired(now_ms) or not rule.applies_to(gate_port, protocol):
                continue
            return self._resolve(rule, defaults, f"ips[{key}]")
        if defaults is not None and defaults.applies_to(gate_port, protocol):
            return self._resolve(defaults, None, "defaults")
        return Decision(allowed=True, reason="no matching rule")

    @staticmethod
    def _resolve(rule: Rule, defaults: Rule | None, where: str) -> Decision:
        def inherited(name: str, unset: Any) -> Any:
            value = getattr(rule, name)
            if value is unset and defaults is not None:
                value = getattr(defaults, name)
            return value

        allow = inherited("allow", None)
        bandwidth = inherited("bandwidthLimit", UNSET)
        labels = inherited("labels", None)
        allowed = True if allow is None else allow
        return Decision(
            allowed=allowed,
            reason=f"{'allowed' if allowed else 'denied'} by {where}",
            bandwidth=None if bandwidth is UNSET or not allowed else bandwidth,
            labels=labels or (),
        )


def merge_documents(values: Sequence[tuple[str, str]]) -> IngressPolicy:
    """Parse and merge `(source name, JSON text)` pairs left to right, then validate.

    When the merge is invalid, each source is validated alone so the error names the
    source at fault; if each is fine alone, the error names the merge."""
    merged: dict[str, Any] = {}
    documents = []
    for name, text in values:
        data = parse_json(text, name)
        if not isinstance(data, dict):
            raise ConfigError(f'{name}: expected an object {{"defaults": ..., "ips": ...}}')
        documents.append((name, data))
        merged = deep_merge(merged, data)
    if len(documents) == 1:
        return IngressPolicy.from_document(merged, documents[0][0])
    try:
        return IngressPolicy.from_document(merged, "merged ingress policy")
    except ConfigError as merged_error:
        for name, data in documents:
            IngressPolicy.from_document(data, name)  # raises naming the culprit
        raise merged_error


def load_policy(values: Sequence[str]) -> IngressPolicy:
    """The policy from `--ingressPolicy` values (JSON text, paths, URLs). Blocking."""
    return merge_documents([(describe_source(v), read_source_text(v)) for v in values])
