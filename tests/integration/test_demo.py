"""`hypergate demo`, as the README's first command runs it, checked with real curl."""

import re
import signal

import trio

from ..procs import HypergateProcess


async def test_demo_prints_a_curl_line_that_works(nursery):
    demo = await HypergateProcess(["demo"], name="demo").start(nursery)
    try:
        line = await demo.wait_for(r"curl http://127\.0\.0\.1:\d+/", timeout=30)
        url = re.search(r"http://\S+", line).group(0)
        result = await trio.run_process(
            ["curl", "-sS", "-m", "10", url], capture_stdout=True, capture_stderr=True, check=False
        )
        assert result.returncode == 0, result.stderr
        assert b"came through an encrypted peer-to-peer tunnel" in result.stdout
    finally:
        code = await demo.stop(signal.SIGINT)
    assert code == 0, "\n".join(demo.lines)
    assert not demo.find("Traceback")
