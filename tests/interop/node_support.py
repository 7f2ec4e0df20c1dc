"""Running the Node scripts kept in tests/interop (vectors, local hyperdht testnet).

Tests that need Node skip with a clear reason when `node` or the npm packages are
missing (`scripts/test` runs `npm install` in this folder).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

INTEROP_DIR = Path(__file__).resolve().parent
NODE_MODULES = INTEROP_DIR / "node_modules"
# Generating the vectors takes well under a second; this only bounds a hung node.
VECTOR_TIMEOUT_S = 60


def require_node() -> str:
    """The node binary, or skip the calling test with the reason."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the interop vectors come from the real npm packages")
    for package in ("hyperdht", "dht-rpc", "compact-encoding"):
        if not (NODE_MODULES / package).is_dir():
            pytest.skip(f"npm package {package} missing: run `npm install` in {INTEROP_DIR}")
    return node


def generate_vectors() -> dict:
    node = require_node()
    result = subprocess.run(
        [node, str(INTEROP_DIR / "gen_vectors.js")],
        cwd=INTEROP_DIR,
        capture_output=True,
        timeout=VECTOR_TIMEOUT_S,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"gen_vectors.js failed: {result.stderr.decode(errors='replace')}")
    return json.loads(result.stdout)
