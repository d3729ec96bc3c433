"""The boards the potentiometer controller's firmware (``firmware/potbank``) is built for,
and how many pots each can drive (``firmware/PROTOCOL.md`` §9).

Two limits: the chip-select pins (one per pot, the SPI and UART pins excluded) and the
static RAM. The firmware's static RAM for ``n`` pots is a fixed part (Arduino core,
serial ring buffers, SPI, the protocol state) plus the per-chain part of
``potbank_protocol.h``: the taps (2 bytes a pot), the receive buffer (the largest
request, SET_ALL, COBS-framed), the reply packet and its COBS frame (the largest reply,
GET_ALL's ``1 + 2 n`` bytes or HELLO's 75). The fixed parts were measured with
``avr-size`` on builds of this firmware (avr-gcc 5.4, Arduino core 1.8.7, ``make size``);
``tests/test_simavr.py`` rebuilds and checks them. A chain must leave ``stack_reserve``
bytes of RAM free for the stack.
"""

from __future__ import annotations

from dataclasses import dataclass

NAME_MAX = 64  # bytes of firmware name in the HELLO reply


def _framed(packet: int) -> int:
    """Bytes of a COBS frame of a packet (one overhead byte per 254, plus one)."""
    return packet + packet // 254 + 1


def chain_ram(n_pots: int) -> int:
    """Static RAM (bytes) of the per-chain buffers of ``potbank::Controller<n_pots>``."""
    payload = max(2 * n_pots + 1, 11 + NAME_MAX)
    receive = _framed(2 * n_pots + 6)
    reply_packet = payload + 6
    reply_frame = _framed(payload + 6) + 1
    return 2 * n_pots + receive + reply_packet + reply_frame


@dataclass(frozen=True)
class Board:
    """A board the firmware is built for (``make BOARD=name``)."""

    name: str
    mcu: str
    ram: int            # bytes of SRAM
    cs_pins: int        # chip-select pins in the firmware's table
    fixed_ram: int      # static RAM apart from chain_ram (measured, see the module doc)
    stack_reserve: int  # bytes kept free for the stack

    def static_ram(self, n_pots: int) -> int:
        return self.fixed_ram + chain_ram(n_pots)

    def ram_pots(self) -> int:
        """The longest chain whose static RAM leaves the stack reserve free (at most 256)."""
        n = 0
        while n < 256 and self.static_ram(n + 1) + self.stack_reserve <= self.ram:
            n += 1
        return n

    def max_pots(self) -> int:
        return min(self.cs_pins, self.ram_pots())

    def problem(self, n_pots: int) -> str | None:
        """Why a chain of ``n_pots`` does not fit this board, or None."""
        if n_pots > self.cs_pins:
            return (f"the {self.name} firmware has {self.cs_pins} chip-select pins (one per pot), "
                    f"the chain needs {n_pots}")
        if n_pots > self.ram_pots():
            return (f"{n_pots} pots need {self.static_ram(n_pots)} bytes of static RAM plus "
                    f"{self.stack_reserve} of stack; the {self.name} has {self.ram}")
        return None


BOARDS = {
    "mega2560": Board("mega2560", "atmega2560", ram=8192, cs_pins=44, fixed_ram=277, stack_reserve=1024),
    "uno": Board("uno", "atmega328p", ram=2048, cs_pins=15, fixed_ram=273, stack_reserve=512),
}
