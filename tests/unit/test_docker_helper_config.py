"""The helper container's create body and command, as the Engine API receives them."""

from hypergate.docker.gateway_bridge import BridgeRoute, HelperRunner, helper_config, helper_name


def test_python_helper_config():
    routes = [BridgeRoute("mysql.hyper", 3306), BridgeRoute("mysql.hyper", 53, "udp")]
    config = helper_config(HelperRunner(), "hypergatenet", "gw1", "10.89.0.1", "mysql.hyper", routes)
    assert config["Image"] == "hypergate"
    assert config["Entrypoint"] == ["python", "-m", "hypergate.docker.forwarder"]
    assert config["Cmd"] == ["--to", "10.89.0.1", "tcp:3306", "udp:53"]
    assert config["ExposedPorts"] == {"3306/tcp": {}, "53/udp": {}}
    assert config["HostConfig"]["NetworkMode"] == "hypergatenet"
    assert "Binds" not in config["HostConfig"]
    assert config["NetworkingConfig"] == {"EndpointsConfig": {"hypergatenet": {"Aliases": ["mysql.hyper"]}}}
    assert config["Labels"]["hypergate.EXCLUDE"] == "true"
    assert "Env" not in config


def test_busybox_helper_command_and_spec_digest_follows_configuration():
    runner = HelperRunner("busybox", kind="busybox")
    routes = [BridgeRoute("web.hyper", 80), BridgeRoute("web.hyper", 443)]
    config = helper_config(runner, "net", "gw", "10.1.0.1", "web.hyper", routes)
    assert config["Entrypoint"] == ["/bin/sh", "-c"]
    assert config["Cmd"] == [
        "nc -ll -p 80 -e nc 10.1.0.1 80 & nc -ll -p 443 -e nc 10.1.0.1 443 & wait"
    ]
    assert not runner.supports("udp") and runner.supports("tcp")
    same = helper_config(runner, "net", "gw", "10.1.0.1", "web.hyper", routes)
    other_target = helper_config(runner, "net", "gw", "10.1.0.2", "web.hyper", routes)
    spec = "hypergate.helper.spec"
    assert same["Labels"][spec] == config["Labels"][spec] != other_target["Labels"][spec]


def test_helper_names_are_valid_and_distinct():
    name = helper_name("gw", "net", "my service/x")
    assert name.startswith("hypergate-helper-my-service-x-")
    assert helper_name("gw", "net", "a.hyper") != helper_name("gw2", "net", "a.hyper")
    assert helper_name("gw", "net", "a.hyper") == helper_name("gw", "net", "a.hyper")
