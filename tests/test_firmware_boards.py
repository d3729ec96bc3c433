"""The bench file's ``[serial] board``: a chain the board cannot drive is refused in one
line naming the key (the numbers come from the firmware's builds, drivers/boards.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from clln.benchfile import parse_bench
from clln.controller.errors import ProtocolError
from clln.drivers.boards import BOARDS, Board, chain_ram

BENCH = (Path(__file__).resolve().parents[1] / "protocols" / "benches" / "example-16.toml").read_text()


def with_board(board: str) -> str:
    return BENCH.replace('watchdog_ms = 2000', f'watchdog_ms = 2000\nboard = "{board}"', 1)


def test_default_board_is_the_mega_2560() -> None:
    assert parse_bench(BENCH, "example-16.toml").serial.board == "mega2560"
    assert parse_bench(with_board("mega2560"), "b.toml").serial.board == "mega2560"


def test_a_board_that_cannot_hold_the_chain_is_one_line() -> None:
    with pytest.raises(ProtocolError) as err:
        parse_bench(with_board("uno"), "uno.toml")
    message = str(err.value)
    assert "\n" not in message and message.startswith("uno.toml: ")
    assert "serial.board = 'uno'" in message and "15 chip-select pins" in message
    assert "mega2560 (up to 44 pots)" in message
    with pytest.raises(ProtocolError, match="serial.board"):
        parse_bench(with_board("due"), "due.toml")


def test_ram_limit() -> None:
    """The RAM model: a byte per buffer byte of potbank_protocol.h, counted by hand here
    for 16 pots (HELLO's 75-byte reply is the largest payload) and 100 pots."""
    assert chain_ram(16) == 2 * 16 + (38 + 1) + (75 + 6) + (81 + 1 + 1)
    assert chain_ram(100) == 2 * 100 + (206 + 1) + (201 + 6) + (207 + 1 + 1)
    uno = BOARDS["uno"]
    n = uno.ram_pots()
    assert uno.static_ram(n) + uno.stack_reserve <= 2048 < uno.static_ram(n + 1) + uno.stack_reserve
    assert "chip-select pins" in (uno.problem(16) or "")  # on an Uno the pins run out first
    wide = Board("wide", "atmega328p", ram=2048, cs_pins=256, fixed_ram=273, stack_reserve=512)
    assert wide.problem(n) is None and "bytes of static RAM" in (wide.problem(n + 1) or "")
