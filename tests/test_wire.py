"""The potentiometer controller's framing (PROTOCOL.md §2) and its firmware logic."""

from __future__ import annotations

import binascii
import struct

import numpy as np
import pytest
from cobs import cobs

from clln.drivers.errors import FrameError
from clln.drivers.wire import Cmd, FrameReader, Packet, crc16, decode_frame, encode_packet
from clln.simulator.bench import PotFirmware


def test_crc_is_ccitt_false() -> None:
    assert crc16(b"123456789") == 0x29B1


def test_protocol_document_example() -> None:
    """PROTOCOL.md §8: HELLO from a 1.0 host with SEQ 0."""
    frame = encode_packet(Packet(0, Cmd.HELLO, bytes([1, 0])))
    assert frame == bytes.fromhex("01030102020103 7A18 00".replace(" ", ""))


@pytest.mark.parametrize("payload", [b"", b"\x00", b"\x00\x00\x01", bytes(range(256)) * 2])
def test_round_trip(payload: bytes) -> None:
    frame = encode_packet(Packet(7, Cmd.SET_ALL, payload))
    assert frame.endswith(b"\x00") and b"\x00" not in frame[:-1]
    assert decode_frame(frame[:-1]) == Packet(7, Cmd.SET_ALL, payload)


def test_every_single_byte_error_is_rejected() -> None:
    frame = encode_packet(Packet(3, Cmd.GET_ALL, struct.pack("<4H", 1, 2, 3, 128)))[:-1]
    for i in range(len(frame)):
        for bit in range(8):
            damaged = bytearray(frame)
            damaged[i] ^= 1 << bit
            with pytest.raises(FrameError):
                decode_frame(bytes(damaged))
        with pytest.raises(FrameError):
            decode_frame(frame[:i] + frame[i + 1:])


def test_corrupted_delimiter_is_rejected() -> None:
    """0x00 -> 0x01 appends a zero byte after the CRC; the length field catches it."""
    frame = encode_packet(Packet(0x22, Cmd.GET_ALL))
    reader = FrameReader()
    assert reader.feed(frame[:-1] + b"\x01") == []
    assert reader.feed(b"\x00") == [] and reader.dropped == 1
    # Without the length field the CRC alone would have accepted it:
    body = bytes([0x22, Cmd.GET_ALL])
    packet = body + binascii.crc_hqx(body, 0xFFFF).to_bytes(2, "big")
    decoded = cobs.decode(cobs.encode(packet) + b"\x01")
    assert binascii.crc_hqx(decoded[:-2], 0xFFFF) == int.from_bytes(decoded[-2:], "big")


def test_reader_resynchronises_after_garbage_and_half_frames() -> None:
    good = encode_packet(Packet(1, Cmd.PING))
    reader = FrameReader()
    stream = b"\x13\x37garbage" + good[: len(good) // 2] + b"\x00" + good + b"\xff" * 700 + b"\x00" + good
    packets = reader.feed(stream)
    assert packets == [Packet(1, Cmd.PING), Packet(1, Cmd.PING)]
    assert reader.dropped == 2


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def ask(fw: PotFirmware, seq: int, cmd: int, payload: bytes = b"") -> Packet:
    out = fw.receive(b"\x00" + encode_packet(Packet(seq, cmd, payload)))
    packets = FrameReader().feed(out)
    assert len(packets) == 1
    assert packets[0].seq == seq and packets[0].cmd == cmd | 0x80
    return packets[0]


def test_firmware_commands_and_status_codes() -> None:
    fw = PotFirmware(4, 129, clock=FakeClock())
    assert ask(fw, 0, Cmd.SET_ALL, struct.pack("<4H", 1, 2, 3, 4)).payload == b"\x04"  # NO_HANDSHAKE
    hello = ask(fw, 1, Cmd.HELLO, bytes([1, 0])).payload
    assert hello[0] == 0 and struct.unpack_from("<BBHHHH", hello, 1) == (1, 1, 4, 129, 128, 2000)
    assert ask(fw, 2, Cmd.SET_ALL, struct.pack("<4H", 1, 2, 3, 4)).payload == b"\x00"
    assert fw.taps.tolist() == [1, 2, 3, 4]
    assert ask(fw, 3, Cmd.SET_ALL, struct.pack("<4H", 1, 2, 3, 129)).payload == b"\x03"
    assert fw.taps.tolist() == [1, 2, 3, 4]  # nothing changed
    assert ask(fw, 4, Cmd.SET_ALL, b"\x01").payload == b"\x02"  # BAD_LENGTH
    assert ask(fw, 5, Cmd.GET_ALL).payload == b"\x00" + struct.pack("<4H", 1, 2, 3, 4)
    assert ask(fw, 6, 0x42).payload == b"\x01"  # UNKNOWN_COMMAND
    assert ask(fw, 7, Cmd.HELLO, bytes([2, 0])).payload[0] == 0x05  # INCOMPATIBLE
    assert ask(fw, 8, Cmd.PARK).payload == b"\x00" and fw.taps.tolist() == [128] * 4


def test_firmware_replays_a_retried_request_without_executing_it_again() -> None:
    fw = PotFirmware(2, 129, clock=FakeClock())
    ask(fw, 0, Cmd.HELLO, bytes([1, 0]))
    frame = b"\x00" + encode_packet(Packet(9, Cmd.SET_ONE, struct.pack("<HH", 0, 5)))
    first = fw.receive(frame)
    writes = fw.writes
    fw.taps[0] = 77  # if it ran again, the tap would go back to 5
    assert fw.receive(frame) == first and fw.writes == writes and fw.taps[0] == 77


def test_watchdog_parks_after_silence() -> None:
    clock = FakeClock()
    fw = PotFirmware(3, 129, clock=clock)
    ask(fw, 0, Cmd.HELLO, bytes([1, 0]))
    ask(fw, 1, Cmd.SET_WATCHDOG, struct.pack("<H", 500))
    ask(fw, 2, Cmd.SET_ALL, struct.pack("<3H", 10, 20, 30))
    clock.now = 0.4
    fw.tick()
    assert fw.taps.tolist() == [10, 20, 30]
    ask(fw, 3, Cmd.PING)  # traffic resets the watchdog
    clock.now = 0.8
    fw.tick()
    assert fw.taps.tolist() == [10, 20, 30]
    clock.now = 1.5
    fw.tick()
    assert fw.taps.tolist() == [128] * 3
    flags = ask(fw, 4, Cmd.GET_STATUS).payload[1]
    assert flags & 0b111 == 0b111  # parked, tripped, handshake
    assert ask(fw, 5, Cmd.GET_STATUS).payload[1] & 0b10 == 0  # reading clears "tripped"
    assert ask(fw, 6, Cmd.SET_WATCHDOG, struct.pack("<H", 50)).payload == b"\x03"


def test_random_bytes_never_yield_a_packet_with_a_bad_crc() -> None:
    rng = np.random.default_rng(0)
    reader = FrameReader()
    for _ in range(2000):
        data = rng.integers(0, 256, rng.integers(1, 40)).astype(np.uint8).tobytes()
        for packet in reader.feed(data + b"\x00"):
            body = bytes([packet.seq, packet.cmd]) + len(packet.payload).to_bytes(2, "little") + packet.payload
            raw = cobs.encode(body + crc16(body).to_bytes(2, "big"))
            assert decode_frame(raw) == packet
