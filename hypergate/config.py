"""Configuration documents: service files, gateway filters, and where they come from.

Every document is JSON text, a file path or an http(s) URL (as in the Node.js original).
One cattrs converter structures them into attrs classes; any error comes out as a single
`ConfigError` line naming the source, the field and the value.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any, Literal, TypeVar

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn

from . import limits
from .errors import ConfigError

T = TypeVar("T")

Protocol = Literal["tcp", "udp"]


def _port(instance: Any, attribute: attrs.Attribute, value: int) -> None:
    if not 1 <= value <= 65535:
        raise ValueError(f"{attribute.name} must be a port number 1-65535, got {value!r}")


def _non_empty(instance: Any, attribute: attrs.Attribute, value: str) -> None:
    if not value.strip():
        raise ValueError(f"{attribute.name} must not be empty")


@attrs.frozen
class Service:
    """One service a provider offers: clients of `gatePort` on a gateway reach
    `serviceHost:servicePort` next to the provider."""

    gatePort: int = attrs.field(validator=_port)
    serviceHost: str = attrs.field(validator=_non_empty)
    servicePort: int = attrs.field(validator=_port)
    protocol: Protocol = "tcp"
    tags: str | None = None


@attrs.frozen
class ServiceFilter:
    """A gateway filter entry: every field that is set must match the service."""

    gatePort: int | None = None
    serviceHost: str | None = None
    servicePort: int | None = None
    protocol: Protocol | None = None
    tags: str | None = None

    def matches(self, service: Service) -> bool:
        return all(
            wanted is None or wanted == getattr(service, name)
            for name, wanted in attrs.asdict(self).items()
        )


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True)

    def strict_int(value: Any, _: type) -> int:
        # JSON true/1.5/"80" are not ports; cattrs' int() would silently accept them.
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {value!r}")
        return value

    def strict_str(value: Any, _: type) -> str:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {value!r}")
        return value

    conv.register_structure_hook(int, strict_int)
    conv.register_structure_hook(str, strict_str)
    for cls in (Service, ServiceFilter):
        conv.register_structure_hook(
            cls, make_dict_structure_fn(cls, conv, _cattrs_forbid_extra_keys=True)
        )
    return conv


converter = _make_converter()


def _format_leaf_error(exc: BaseException, type_: Any) -> str:
    if isinstance(exc, cattrs.ForbiddenExtraKeysError):
        return f"unknown field(s) {', '.join(sorted(exc.extra_fields))}"
    if isinstance(exc, KeyError):
        return "required field missing"
    literal_choices = getattr(type_, "__args__", None)
    if literal_choices and "literal" in str(exc):
        return f"must be one of {', '.join(map(repr, literal_choices))}"
    return str(exc) or type(exc).__name__


def describe_structure_error(exc: BaseException, source: str) -> str:
    """One line: `source: $[0].gatePort: must be a port number 1-65535, got 0`."""
    if isinstance(exc, (cattrs.BaseValidationError, cattrs.ForbiddenExtraKeysError)):
        parts = cattrs.transform_error(exc, path="$", format_exception=_format_leaf_error)
        return f"{source}: " + "; ".join(parts)
    return f"{source}: {exc}"


def structure(data: Any, cls: type[T], source: str) -> T:
    try:
        return converter.structure(data, cls)
    except Exception as exc:  # cattrs wraps validator errors; flatten them to one line
        raise ConfigError(describe_structure_error(exc, source)) from None


def describe_source(value: str) -> str:
    """How a source is named in messages: URLs and paths as given, JSON text as 'inline JSON'."""
    stripped = value.lstrip()
    if stripped.startswith(("{", "[")):
        return "inline JSON"
    return value


def read_source_text(value: str) -> str:
    """The text of a document given as JSON text, a path, or an http(s) URL (blocking)."""
    stripped = value.lstrip()
    if stripped.startswith(("{", "[")):
        return value
    if stripped.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(stripped, timeout=limits.URL_FETCH_TIMEOUT_S) as resp:
                body = resp.read(limits.MAX_URL_DOCUMENT + 1)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise ConfigError(f"{value}: cannot fetch: {exc}") from None
        if len(body) > limits.MAX_URL_DOCUMENT:
            raise ConfigError(f"{value}: document larger than {limits.MAX_URL_DOCUMENT} bytes")
        return body.decode("utf-8", errors="replace")
    path = os.path.expanduser(value)
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read(limits.MAX_URL_DOCUMENT + 1)
    except OSError as exc:
        raise ConfigError(f"{value}: cannot read: {exc.strerror or exc}") from None


def parse_json(text: str, source: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{source}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None


def _entries(data: Any, source: str) -> list[Any]:
    # A file holds an array of entries or {"services": [...]} (both forms of the original).
    if isinstance(data, dict) and set(data) == {"services"}:
        data = data["services"]
    if not isinstance(data, list):
        raise ConfigError(f"{source}: expected an array of services or {{\"services\": [...]}}")
    return data


def load_services(value: str) -> list[Service]:
    """Services from one `--provider` value (JSON text, path or URL)."""
    source = describe_source(value)
    return structure(_entries(parse_json(read_source_text(value), source), source), list[Service], source)


def load_filters(value: str) -> list[ServiceFilter]:
    """Filter entries from a `--gateway` value (JSON text, path or URL)."""
    source = describe_source(value)
    return structure(
        _entries(parse_json(read_source_text(value), source), source), list[ServiceFilter], source
    )
