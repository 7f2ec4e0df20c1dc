"""Session control messages and channel open/reset payloads (sans-IO).

JSON on the wire (as the original's route adverts were), structured into attrs classes
by one cattrs converter; anything malformed raises `MessageError`.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Literal

import attrs
import cattrs

from ..config import Protocol, Service
from ..errors import ProtocolError

PROTOCOL_VERSION = 1


class MessageError(ProtocolError):
    """A control message that does not parse or does not fit its schema."""


@attrs.frozen
class Hello:
    """First message on every link, both ways: who the peer is and what it speaks.

    A process may be provider, gateway or both; a link is kept only when one side
    provides what the other gateways."""

    type: Literal["hello"]
    version: int
    provider: bool = False
    gateway: bool = False
    name: str = ""
    # A WebSocket relay this peer offers to its router (ws:// or wss://), or "". Peers
    # that have no relay of their own wait there for clients that cannot reach them.
    relay: str = ""


@attrs.frozen
class RouteEntry:
    """One service as a provider advertises it, with the policy gateways must enforce."""

    service: Service
    policy: dict[str, Any] | None = None


@attrs.frozen
class Routes:
    """A provider's complete route list: it replaces whatever the gateway had from it."""

    type: Literal["routes"]
    routes: list[RouteEntry]


Message = Hello | Routes


@attrs.frozen
class OpenRequest:
    """Payload of an OPEN frame: which gate the client came in on, and who it is."""

    gatePort: int
    protocol: Protocol
    fingerprint: dict[str, Any] = attrs.Factory(dict)


class ResetCode:
    """Why a channel was refused or reset; gateways try the next provider on some."""

    SERVICE_UNREACHABLE = "service_unreachable"  # next provider may work
    NO_SUCH_SERVICE = "no_such_service"  # next provider may work
    REFUSED = "refused"  # policy or limits: do not retry elsewhere
    GOING_AWAY = "going_away"  # peer shutting down: next provider may work
    LINK_CLOSED = "link_closed"
    BANDWIDTH_EXCEEDED = "bandwidth_exceeded"
    CLOSED = "closed"  # the other side's socket closed abnormally
    PROTOCOL_ERROR = "protocol_error"


RETRYABLE_CODES = frozenset(
    {
        ResetCode.SERVICE_UNREACHABLE,
        ResetCode.NO_SUCH_SERVICE,
        ResetCode.GOING_AWAY,
        ResetCode.LINK_CLOSED,
    }
)


@attrs.frozen
class ResetReason:
    code: str
    message: str = ""

    def __str__(self) -> str:
        return f"{self.code}: {self.message}" if self.message else self.code


_converter = cattrs.Converter(forbid_extra_keys=False)


def _json_object(value: Any, _: type) -> dict[str, Any]:
    # Free-form objects (fingerprints, policies) are JSON already: taken whole, not key by
    # key and value by value as cattrs would (~20 calls for each OPEN's fingerprint).
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    return value


_converter.register_structure_hook_func(lambda t: t == dict[str, Any], _json_object)
_converter.register_unstructure_hook_func(lambda t: t == dict[str, Any], lambda value: value)


def _structure_message(data: Any, _: type) -> Message:
    if not isinstance(data, dict):
        raise ValueError("a control message must be a JSON object")
    kind = data.get("type")
    if kind == "hello":
        return _converter.structure(data, Hello)
    if kind == "routes":
        return _converter.structure(data, Routes)
    raise ValueError(f"unknown control message type {kind!r}")


def _loads(payload: bytes, what: str) -> Any:
    try:
        return json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MessageError(f"{what} is not valid JSON: {exc}") from None


def _dumps(obj: Any) -> bytes:
    return json.dumps(_converter.unstructure(obj), separators=(",", ":")).encode()


def encode_message(message: Message) -> bytes:
    return _dumps(message)


def decode_message(payload: bytes) -> Message:
    data = _loads(payload, "control message")
    try:
        return _structure_message(data, Message)
    except Exception as exc:
        raise MessageError(f"bad control message: {_describe(exc)}") from None


def encode_open(request: OpenRequest) -> bytes:
    return _dumps(request)


def decode_open(payload: bytes) -> OpenRequest:
    data = _loads(payload, "open request")
    # A provider keeps every open channel's fingerprint (the resolver serves it): JSON
    # decoding gives each one its own copy of every key and of values such as the
    # client's address; shared (interned) strings save ~0.7 KB per channel.
    if type(data) is dict and type(data.get("fingerprint")) is dict:
        data["fingerprint"] = _shared_strings(data["fingerprint"])
    try:
        return _converter.structure(data, OpenRequest)
    except Exception as exc:
        raise MessageError(f"bad open request: {_describe(exc)}") from None


_SHARE_BELOW = 32  # characters: keys, addresses, protocol names (not the random id)


def _shared_strings(obj: dict[str, Any]) -> dict[str, Any]:
    # One call per object, not per value: this runs for every channel a provider opens.
    shared = {}
    for key, value in obj.items():
        kind = type(value)
        if kind is str:
            if len(value) < _SHARE_BELOW:
                value = sys.intern(value)
        elif kind is dict:
            value = _shared_strings(value)
        elif kind is list:
            value = [
                sys.intern(item) if type(item) is str and len(item) < _SHARE_BELOW else item
                for item in value
            ]
        shared[sys.intern(key) if len(key) < _SHARE_BELOW else key] = value
    return shared


def encode_reset(reason: ResetReason) -> bytes:
    data = _dumps(reason)
    # RESET payloads are bounded; a long message is cut, never the code.
    if len(data) > 1024:
        data = _dumps(ResetReason(reason.code, reason.message[:200]))
    return data


def decode_reset(payload: bytes) -> ResetReason:
    if not payload:
        return ResetReason(ResetCode.CLOSED)
    try:
        return _converter.structure(_loads(payload, "reset reason"), ResetReason)
    except Exception as exc:
        return ResetReason(ResetCode.PROTOCOL_ERROR, f"unreadable reset reason: {_describe(exc)}")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, cattrs.BaseValidationError):
        return "; ".join(cattrs.transform_error(exc))
    return str(exc)
