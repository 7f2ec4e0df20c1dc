"""Service files and gateway filters: every source form, and errors that name the cause."""

import json

import pytest

from hypergate.config import Service, ServiceFilter, load_filters, load_services
from hypergate.errors import ConfigError


def test_array_and_services_object_forms_from_text_and_file(tmp_path):
    entries = [{"gatePort": 8080, "serviceHost": "127.0.0.1", "servicePort": 80}]
    path = tmp_path / "svc.json"
    path.write_text(json.dumps({"services": entries + [{"gatePort": 53, "serviceHost": "dns", "servicePort": 53, "protocol": "udp", "tags": "x"}]}))
    assert load_services(json.dumps(entries)) == [Service(8080, "127.0.0.1", 80, "tcp")]
    assert load_services(str(path))[1] == Service(53, "dns", 53, "udp", "x")


@pytest.mark.parametrize(
    "doc, expected",
    [
        ('[{"gatePort": 0, "serviceHost": "a", "servicePort": 1}]', "gatePort must be a port number 1-65535, got 0"),
        ('[{"gatePort": "80", "serviceHost": "a", "servicePort": 1}]', "expected an integer, got '80' @ $[0].gatePort"),
        ('[{"gatePort": 80, "serviceHost": "a", "servicePort": 1, "protocol": "sctp"}]', "must be one of 'tcp', 'udp' @ $[0].protocol"),
        ('[{"gatePort": 80, "serviceHost": "a", "servicePort": 1, "extra": 1}]', "unknown field(s) extra @ $[0]"),
        ('[{"gatePort": 80}]', "required field missing @ $[0].serviceHost"),
        ('{"routes": []}', "expected an array of services"),
        ("[1,", "invalid JSON at line 1 column 4"),
    ],
)
def test_bad_documents_give_one_line_naming_source_field_and_value(doc, expected):
    with pytest.raises(ConfigError) as info:
        load_services(doc)
    message = str(info.value)
    assert message.startswith("inline JSON: ") and expected in message and "\n" not in message


def test_file_errors_name_the_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[{"gatePort": 70000, "serviceHost": "a", "servicePort": 1}]')
    with pytest.raises(ConfigError, match=f"{path}: gatePort must be a port number 1-65535, got 70000"):
        load_services(str(path))
    with pytest.raises(ConfigError, match="missing.json: cannot read: No such file"):
        load_services(str(tmp_path / "missing.json"))


async def test_services_from_a_url(nursery):
    import trio

    from hypergate.http.server import Response, serve_http

    body = json.dumps([{"gatePort": 9000, "serviceHost": "h", "servicePort": 9}]).encode()

    async def handler(request):
        return Response(200, body) if request.path == "/svc.json" else Response(404, b"no")

    port = await nursery.start(serve_http, handler, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{port}/svc.json"
    assert await trio.to_thread.run_sync(load_services, url) == [Service(9000, "h", 9)]
    with pytest.raises(ConfigError, match="cannot fetch: HTTP Error 404"):
        await trio.to_thread.run_sync(load_services, f"http://127.0.0.1:{port}/missing")


def test_filters_accept_partial_entries():
    filters = load_filters('[{"gatePort": 80}, {"serviceHost": "db", "protocol": "tcp"}]')
    assert filters == [ServiceFilter(gatePort=80), ServiceFilter(serviceHost="db", protocol="tcp")]
    assert filters[1].matches(Service(3306, "db", 3306)) and not filters[1].matches(Service(3306, "db", 3306, "udp"))


def test_example_service_files_in_the_repository_are_valid():
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[2] / "services"
    assert load_services(str(root / "http.json")) == [Service(8080, "127.0.0.1", 80, "tcp")]
    mixed = load_services(str(root / "mixed.json"))
    assert {s.protocol for s in mixed} == {"tcp", "udp"} and len(mixed) == 3
    filters = load_filters(str(root / "gateway-filter.json"))
    assert sum(any(f.matches(s) for f in filters) for s in mixed) == 2
