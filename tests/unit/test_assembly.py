"""Record assembly from the outgoing queues: control first, then one frame per channel
in turn, never more than fits."""

import collections

from hypergate.mux.assembly import assemble_record
from hypergate.wire.frames import Flag, FrameDecoder, FrameType, encode_frame


class FakeChannel:
    def __init__(self, channel_id):
        self.id = channel_id
        self.credited = 0

    def _credit_changed(self):
        self.credited += 1


def queues(**frames_by_channel):
    channels = {name: FakeChannel(i + 1) for i, name in enumerate(frames_by_channel)}
    ready = collections.deque(channels.values())
    outq = {channels[name]: collections.deque(frames) for name, frames in frames_by_channel.items()}
    queued = {channel: sum(len(p) for _, p in outq[channel]) for channel in outq}
    return channels, ready, outq, queued


def test_control_first_then_round_robin_one_frame_per_channel():
    bulk, small = [(0, b"B" * 1000), (0, b"b" * 1000), (Flag.FIN, b"")], [(0, b"s")]
    channels, ready, outq, queued = queues(bulk=bulk, small=small)
    control = collections.deque([encode_frame(FrameType.PING, 0, value=7)])
    buf = bytearray(10_000)
    size = assemble_record(buf, control, ready, outq, queued)
    frames = FrameDecoder().feed(bytes(buf[:size]))
    assert [(f.type, f.channel, bytes(f.payload)) for f in frames] == [
        (FrameType.PING, 0, b""),
        (FrameType.DATA, 1, b"B" * 1000),
        (FrameType.DATA, 2, b"s"),  # the small channel's turn comes before bulk's second
        (FrameType.DATA, 1, b"b" * 1000),
        (FrameType.DATA, 1, b""),
    ]
    assert frames[-1].flags & Flag.FIN
    assert not ready and not outq and not queued and not control
    assert channels["bulk"].credited == 3 and channels["small"].credited == 1


def test_stops_before_a_frame_that_does_not_fit_and_keeps_it_queued():
    channels, ready, outq, queued = queues(a=[(0, b"x" * 100), (0, b"y" * 100)])
    buf = bytearray(12 + 100 + 12 + 50)
    size = assemble_record(buf, collections.deque(), ready, outq, queued)
    assert size == 112
    assert list(ready) == [channels["a"]] and queued[channels["a"]] == 100
    assert outq[channels["a"]][0] == (0, b"y" * 100)


def test_an_oversized_control_frame_yields_zero_and_stays_first():
    control = collections.deque([b"z" * 500])
    _, ready, outq, queued = queues(a=[(0, b"x")])
    assert assemble_record(bytearray(100), control, ready, outq, queued) == 0
    assert control[0] == b"z" * 500 and ready  # data waits behind it: order is kept


def test_channels_whose_frames_went_away_are_dropped_from_the_turn():
    channels, ready, outq, queued = queues(gone=[], live=[(0, b"ok")])
    del outq[channels["gone"]]
    buf = bytearray(1000)
    size = assemble_record(buf, collections.deque(), ready, outq, queued)
    assert [(f.channel, bytes(f.payload)) for f in FrameDecoder().feed(bytes(buf[:size]))] == [(2, b"ok")]
    assert not ready
