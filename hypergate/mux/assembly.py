"""Assembling one record's plaintext from the session's outgoing queues (sans-IO).

Control frames go first; then one DATA frame per channel in turn, so a bulk channel
cannot delay a small one by more than one frame. Frames are written straight into the
record buffer: the only copy of a payload on our side.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING

from ..wire.frames import HEADER, VERSION, FrameType

if TYPE_CHECKING:
    from .channel import Channel

OutgoingQueue = collections.deque  # of (flags, payload) per channel


def assemble_record(
    buf: bytearray,
    control: collections.deque[bytes],
    ready: collections.deque[Channel],
    outq: dict[Channel, OutgoingQueue],
    queued: dict[Channel, int],
) -> int:
    """Move queued frames into `buf` until the next one does not fit; returns the size
    (0 only when the first control frame alone is larger than the buffer). A channel
    whose frame went out is told (`_credit_changed`): its sender may queue more."""
    limit = len(buf)
    pos = 0
    while control:
        frame = control[0]
        end = pos + len(frame)
        if end > limit:
            break
        control.popleft()
        buf[pos:end] = frame
        pos = end
    pack_into = HEADER.pack_into
    header_size = HEADER.size
    while ready and pos + header_size <= limit and not control:
        channel = ready[0]
        queue = outq.get(channel)
        if not queue:  # its frames went away with a reset
            ready.popleft()
            outq.pop(channel, None)
            queued.pop(channel, None)
            continue
        flags, payload = queue[0]
        size = len(payload)
        body = pos + header_size
        end = body + size
        if end > limit:
            break
        ready.popleft()
        queue.popleft()
        pack_into(buf, pos, VERSION, FrameType.DATA, flags, channel.id, size)
        if size:
            buf[body:end] = payload
        pos = end
        if queue:
            queued[channel] -= size
            ready.append(channel)
        else:
            del outq[channel]
            del queued[channel]
        channel._credit_changed()
    return pos
