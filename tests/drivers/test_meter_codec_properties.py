"""Property tests: the meter and CAN codecs take any bytes without raising anything but their
own FrameError, and never hand back a value that their checks did not pass."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent_drivers.iec62056 import codec
from edge_agent_drivers.mbus import frames, records

bytes_ = st.binary(max_size=600)


@settings(max_examples=400, deadline=None)
@given(bytes_)
def test_iec62056_readout_parser_takes_any_bytes(data: bytes) -> None:
    try:
        sets = codec.parse_readout(data)
    except codec.FrameError:
        return
    start, end = data.find(codec.STX), data.find(codec.ETX, data.find(codec.STX) + 1)
    assert data[end + 1] == codec.bcc(data[start + 1:end + 1])  # only a checked message parses
    assert all(s.code and "(" not in s.code for s in sets)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.from_regex(r"[0-9A-Z.:*\-]{1,12}\([0-9.A-Za-z*\-]{0,20}\)", fullmatch=True),
                max_size=20))
def test_iec62056_readouts_round_trip_and_any_flipped_bit_is_caught(lines: list[str]) -> None:
    message = codec.readout(lines)
    assert len(codec.parse_readout(message)) == len(lines)
    for position in range(1, len(message)):
        corrupt = bytearray(message)
        corrupt[position] ^= 0x01
        with pytest.raises(codec.FrameError):
            parsed = codec.parse_readout(bytes(corrupt))
            # a flip inside the data that keeps the framing must still fail the BCC
            assert parsed is None


@settings(max_examples=300, deadline=None)
@given(bytes_)
def test_iec62056_identification_parser_takes_any_bytes(data: bytes) -> None:
    try:
        ident = codec.parse_identification(data)
    except codec.FrameError:
        return
    assert ident.max_baudrate in codec.BAUD_RATES.values()


@settings(max_examples=400, deadline=None)
@given(st.lists(bytes_, max_size=8))
def test_mbus_frame_reader_takes_any_byte_stream_and_returns_only_checked_frames(
        chunks: list[bytes]) -> None:
    reader = frames.FrameReader()
    for chunk in chunks:
        reader.feed(chunk)
        for _ in range(len(chunk) + 2):
            try:
                frame = reader.next()
            except frames.FrameError:
                continue
            if frame is None:
                break
            raw = frame.raw
            if frame.kind == "long":
                assert raw[-1] == frames.STOP and sum(raw[4:-2]) & 0xFF == raw[-2]
            elif frame.kind == "short":
                assert raw[-1] == frames.STOP and (raw[1] + raw[2]) & 0xFF == raw[3]
        assert len(reader.buffer) <= frames.FrameReader.MAX_PENDING


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=12, max_size=240))
def test_mbus_record_decoding_of_any_payload_raises_only_frame_errors(payload: bytes) -> None:
    raw = frames.long_frame(0x08, 5, 0x72, payload)
    reader = frames.FrameReader()
    reader.feed(raw)
    frame = reader.next()
    assert frame is not None
    try:
        telegram = records.decode(frame)
    except frames.FrameError:
        return
    for record in telegram.records:
        assert record.name
        assert record.value is None or isinstance(record.value, str) or (
            record.value == record.value and abs(record.value) != float("inf"))


@settings(max_examples=400, deadline=None)
@given(st.sampled_from([256, 512, 0x18FEF1FE, 0x123]), st.binary(max_size=8),
       st.booleans(), st.booleans())
def test_can_frames_of_any_content_decode_without_raising_and_good_means_in_range(
        frame_id: int, data: bytes, error_frame: bool, remote: bool) -> None:
    import can

    from edge_agent_drivers.can.config import CanDevice
    from edge_agent_drivers.can.driver import CanDriver
    from edge_agent_simulators.can.slcan import DEFAULT_DBC

    driver = CanDriver(CanDevice(name="c", driver="can", interface="virtual", channel="p",
                                 dbc=DEFAULT_DBC))
    frame = can.Message(arbitration_id=frame_id, data=data, is_error_frame=error_frame,
                        is_remote_frame=remote and not error_frame,
                        is_extended_id=frame_id > 0x7FF, timestamp=1.0)
    sample = driver._decode(frame)
    if sample is None:
        return
    message = driver._messages[frame_id]
    limits = {s.name: (s.minimum, s.maximum) for s in message.signals}
    for reading in sample.readings:
        low, high = limits[reading.metric]
        if reading.quality == "good":
            assert low <= reading.value <= high
