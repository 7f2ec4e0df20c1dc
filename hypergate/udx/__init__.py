"""UDX: reliable, ordered, congestion- and flow-controlled byte streams over UDP,
wire-compatible with Node's udx-native (see docs in /work/shared/UDX-WIRE.md)."""

from hypergate.udx.packet import UdxPacketError, is_udx
from hypergate.udx.socket import UdxSocket, UdxStream

__all__ = ["UdxPacketError", "UdxSocket", "UdxStream", "is_udx"]
