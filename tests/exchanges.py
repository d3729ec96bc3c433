"""Expected-exchange doubles for instrument drivers (docs/contributing.md, "Style")."""

from __future__ import annotations


class Script:
    """A pyvisa-like resource replaying (command, reply) pairs; fails on anything else,
    and :meth:`done` fails if any pair is left over."""

    def __init__(self, pairs: list[tuple[str, str | None]]) -> None:
        self.pairs = list(pairs)

    def write(self, command: str) -> None:
        sent, reply = self.pairs.pop(0)
        assert (command, reply) == (sent, None), f"wrote {command!r}, expected {sent!r}"

    def query(self, command: str) -> str:
        sent, reply = self.pairs.pop(0)
        assert command == sent and reply is not None, f"asked {command!r}, expected {sent!r}"
        return reply

    def close(self) -> None:
        pass

    def done(self) -> None:
        assert not self.pairs, f"left over: {self.pairs}"
