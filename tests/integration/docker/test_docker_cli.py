"""Docker mode as a user runs it: `hypergate --docker` processes on a real Podman engine.

"Machine A" runs a provider over network A, where a database container answers as
`mysql.hyper`; "machine B" runs a gateway over network B. A container on B reaches
`mysql.hyper` by name. Nothing visible to `docker inspect` carries the router secret.
"""

import signal

import trio

from ...procs import free_port, new_secret

PAGE = "hello-from-the-database-container"


async def test_cli_docker_mode_reaches_a_remote_container_by_name(podman, cluster):
    net_a, net_b = podman.unique("hg-a"), podman.unique("hg-b")
    port, peer, secret = free_port(), free_port(), new_secret()
    podman.run("network", "create", net_a)
    podman.run("network", "create", net_b)
    database = podman.unique("db")
    podman.run(
        "run", "-d", "--name", database, "--network", net_a, "--network-alias", "mysql.hyper",
        "--label", f"hypergate.EXPOSE={port}", podman.image,
        "sh", "-c", f"mkdir /www && echo {PAGE} > /www/index.html && exec httpd -f -p {port} -h /www",
    )
    client = podman.unique("phpmyadmin")
    podman.run("run", "-d", "--name", client, "--network", net_b, podman.image, "sleep", "600")

    provider = await cluster.start(
        "--router", secret, "--docker", podman.socket_path, "--network", net_a, "--refreshTime", "1000",
        "--peerPort", str(peer), "--peerHost", "127.0.0.1", "--fingerprintResolverPort", "0",
        name="docker-provider",
    )
    await provider.wait_for(r"docker services changed .*mysql\.hyper")
    gateway = await cluster.start(
        "--router", secret, "--gateway", "--docker", podman.socket_path, "--network", net_b,
        "--image", podman.image, "--helperKind", "busybox", "--refreshTime", "1000",
        "--peer", f"127.0.0.1:{peer}",
        name="docker-gateway",
    )
    await gateway.wait_for(rf"gate={port}/tcp event=gate_open", timeout=30)
    await gateway.wait_for("docker helper started alias=mysql.hyper", timeout=30)

    script = (
        f"for i in $(seq 150); do wget -q -O - http://mysql.hyper:{port}/ && exit 0; "
        "sleep 0.1; done; exit 1"
    )
    result = await trio.to_thread.run_sync(lambda: podman.run("exec", client, "sh", "-c", script, check=False))
    assert (result.returncode, result.stdout.strip()) == (0, PAGE), result.stderr

    # What other users of the engine can see holds no secret.
    names = podman.run("ps", "-a", "--format", "{{.Names}}").stdout.split()
    inspected = podman.run("inspect", *names).stdout + podman.run("network", "inspect", net_a, net_b).stdout
    assert secret not in inspected and secret not in " ".join(names)

    # A clean stop removes the gateway's helpers.
    await gateway.stop(signal.SIGTERM)
    remaining = podman.run("ps", "-a", "--format", "{{.Names}}").stdout.split()
    assert sorted(remaining) == sorted([database, client])
