"""Host side of the potentiometer controller's wire protocol (``firmware/PROTOCOL.md``):
COBS framing with a 0x00 delimiter, a length field, CRC-16/CCITT-FALSE, sequence numbers."""

from __future__ import annotations

import binascii
from dataclasses import dataclass

from cobs import cobs

from clln.drivers.errors import FrameError

PROTOCOL_VERSION = (1, 1)
MAX_PAYLOAD = 512
MAX_FRAME = 600  # encoded bytes kept before a delimiter; longer is garbage
DELIMITER = b"\x00"


class Cmd:
    """Command codes (PROTOCOL.md §5); replies carry ``code | 0x80``."""

    HELLO = 0x01
    SET_ALL = 0x02
    GET_ALL = 0x03
    SET_ONE = 0x04
    PARK = 0x05
    PING = 0x06
    SET_WATCHDOG = 0x07
    GET_STATUS = 0x08
    BOOT = 0x09  # sent unsolicited by the firmware after a reset, with the reply bit
    REPLY = 0x80


STATUS_NAMES = {
    0x00: "OK", 0x01: "UNKNOWN_COMMAND", 0x02: "BAD_LENGTH", 0x03: "OUT_OF_RANGE",
    0x04: "NO_HANDSHAKE", 0x05: "INCOMPATIBLE", 0x06: "HARDWARE_FAULT",
}


@dataclass(frozen=True)
class Packet:
    """A decoded packet: sequence number, command code, payload."""

    seq: int
    cmd: int
    payload: bytes = b""


RESET_CAUSES = {0x01: "power-on", 0x02: "external reset", 0x04: "brown-out", 0x08: "watchdog"}
"""``reset_cause`` bits of the BOOT packet (the AVR's MCUSR)."""


@dataclass(frozen=True)
class BootInfo:
    """What a ``BOOT`` packet said: why the firmware restarted and whether it parked the pots."""

    reset_cause: int
    version: tuple[int, int]
    parked: bool

    @property
    def causes(self) -> str:
        """The reset causes in words ("external reset", "power-on, brown-out", ...)."""
        names = [name for bit, name in RESET_CAUSES.items() if self.reset_cause & bit]
        return ", ".join(names) or f"unknown cause {self.reset_cause:#04x}"

    @classmethod
    def from_packet(cls, packet: Packet) -> BootInfo:
        """Parse a BOOT packet; FrameError if it is too short."""
        p = packet.payload
        if len(p) < 5:
            raise FrameError(f"BOOT packet of {len(p)} payload bytes, expected 5")
        return cls(p[1], (p[2], p[3]), bool(p[4]))


def is_boot(packet: Packet) -> bool:
    """Whether a packet is the firmware's unsolicited BOOT announcement."""
    return packet.seq == 0 and packet.cmd == (Cmd.BOOT | Cmd.REPLY)


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF)."""
    return binascii.crc_hqx(data, 0xFFFF)


def encode_packet(packet: Packet) -> bytes:
    """The frame on the wire: COBS(packet with CRC) followed by the 0x00 delimiter."""
    if not (0 <= packet.seq <= 255 and 0 <= packet.cmd <= 255):
        raise ValueError("seq and cmd are single bytes")
    if len(packet.payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(packet.payload)} bytes exceeds {MAX_PAYLOAD}")
    body = bytes([packet.seq, packet.cmd]) + len(packet.payload).to_bytes(2, "little") + packet.payload
    return cobs.encode(body + crc16(body).to_bytes(2, "big")) + DELIMITER


def decode_frame(frame: bytes) -> Packet:
    """Decode one frame (without its delimiter).

    Raises
    ------
    FrameError
        if the frame is not valid COBS, is shorter than 4 or longer than the maximum
        packet once decoded, or its CRC does not match. No other exception escapes.
    """
    if len(frame) > MAX_FRAME:
        raise FrameError(f"frame of {len(frame)} bytes is too long")
    try:
        packet = cobs.decode(bytes(frame))
    except cobs.DecodeError as exc:
        raise FrameError(f"invalid COBS: {exc}") from None
    if len(packet) < 6:
        raise FrameError(f"packet of {len(packet)} bytes is shorter than 6")
    if len(packet) > MAX_PAYLOAD + 6:
        raise FrameError(f"packet of {len(packet)} bytes is too long")
    length = int.from_bytes(packet[2:4], "little")
    if length != len(packet) - 6:
        raise FrameError(f"LEN says {length} payload bytes, the packet has {len(packet) - 6}")
    body, crc = packet[:-2], int.from_bytes(packet[-2:], "big")
    if crc16(body) != crc:
        raise FrameError(f"CRC mismatch (got {crc:#06x}, computed {crc16(body):#06x})")
    return Packet(body[0], body[1], bytes(body[4:]))


class FrameReader:
    """Splits a byte stream into packets; drops garbage, half frames and bad CRCs.

    Attributes
    ----------
    dropped : number of frames dropped (bad COBS, length or CRC, or overlong garbage).
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._discarding = False
        self.dropped = 0

    def reset(self) -> None:
        """Forget any partial frame."""
        self._buffer.clear()
        self._discarding = False

    def feed(self, data: bytes) -> list[Packet]:
        """Packets completed by ``data``, in order."""
        packets = []
        for byte in data:
            if byte == 0:
                if self._discarding:
                    self._discarding = False
                elif self._buffer:
                    try:
                        packets.append(decode_frame(bytes(self._buffer)))
                    except FrameError:
                        self.dropped += 1
                self._buffer.clear()
            elif not self._discarding:
                self._buffer.append(byte)
                if len(self._buffer) > MAX_FRAME:
                    self._buffer.clear()
                    self._discarding = True
                    self.dropped += 1
        return packets
