"""The network-namespace NAT lab (root only): topologies of public and NATed hosts.

`Lab` builds and removes a topology; `Agent` (via `Lab.agent`) drives real sockets inside
it. Used by tests/netlab and by bench scripts; see tests/netlab/README.md.
"""

from hypergate.netlab.lab import (
    BOOTSTRAP_ADDRESS,
    INTERNET_ADDRESSES,
    KINDS,
    Host,
    Lab,
    LabError,
    Nat,
    cleanup_stale,
    in_netns,
    missing_requirements,
)

__all__ = [
    "BOOTSTRAP_ADDRESS", "INTERNET_ADDRESSES", "KINDS", "Host", "Lab", "LabError", "Nat",
    "cleanup_stale", "in_netns", "missing_requirements",
]
