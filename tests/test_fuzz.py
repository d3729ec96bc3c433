"""Property-based tests: malformed protocol and bench files, and random serial bytes."""

from __future__ import annotations

import io
from contextlib import redirect_stderr

import pytest
from fuzzing import BENCH, PROTOCOL, mutated
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clln.benchfile import parse_bench
from clln.controller.errors import ProtocolError
from clln.drivers.errors import FrameError
from clln.drivers.wire import FrameReader, crc16, decode_frame
from clln.protocol import parse_protocol

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.slow
@FAST
@given(mutated(PROTOCOL))
def test_malformed_protocols_give_one_line_protocol_errors(text: str) -> None:
    try:
        parse_protocol(text, "fuzz.toml")
    except ProtocolError as exc:
        message = str(exc)
        assert message.startswith("fuzz.toml: ") and "\n" not in message


@FAST
@given(mutated(BENCH))
def test_malformed_bench_files_give_one_line_protocol_errors(text: str) -> None:
    try:
        parse_bench(text, "bench.toml")
    except ProtocolError as exc:
        message = str(exc)
        assert message.startswith("bench.toml: ") and "\n" not in message


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80))
def test_frame_decoder_raises_only_frame_errors_and_checks_the_crc(data: bytes) -> None:
    try:
        packet = decode_frame(data)
    except FrameError:
        return
    body = bytes([packet.seq, packet.cmd]) + len(packet.payload).to_bytes(2, "little") + packet.payload
    from cobs import cobs

    raw = cobs.decode(data)
    assert raw[:-2] == body and crc16(body) == int.from_bytes(raw[-2:], "big")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=60), max_size=8))
def test_frame_reader_never_raises(chunks: list[bytes]) -> None:
    reader = FrameReader()
    for chunk in chunks:
        for packet in reader.feed(chunk):
            assert 0 <= packet.seq <= 255


@settings(max_examples=40, deadline=None)
@given(mutated(PROTOCOL))
def test_cli_exits_2_with_one_line_on_malformed_protocols(tmp_path_factory: pytest.TempPathFactory,
                                                          text: str) -> None:
    from clln.cli import main

    directory = tmp_path_factory.mktemp("fuzz")
    path = directory / "p.toml"
    path.write_text(text)
    try:
        parse_protocol(text, str(path))
    except ProtocolError:
        pass
    else:
        return  # the mutation happened to be valid
    err = io.StringIO()
    with redirect_stderr(err), pytest.raises(SystemExit) as code:
        import sys

        argv = sys.argv
        sys.argv = ["clln", "train", str(path), "--out", str(directory / "runs"), "--bench",
                    "protocols/benches/example-16.toml", "--emulate"]
        try:
            main()
        finally:
            sys.argv = argv
    assert code.value.code == 2
    assert err.getvalue().count("\n") == 1 and "Traceback" not in err.getvalue()
