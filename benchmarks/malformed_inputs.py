"""Malformed input never reaches hardware, and the frame parser never lets a bad frame by.

1. 1,000 generated malformed protocol and bench files (random key drops, retyped values,
   unknown keys, garbage), each given to ``clln train PROTOCOL --bench BENCH --emulate
   --traffic-log LOG``: counts exit codes, tracebacks, one-line errors, and anything
   written to the emulator's serial port or analog outputs.
2. 100,000 random byte strings fed to the serial frame decoder: counts the exceptions by
   type and any accepted frame whose CRC does not check.

Usage: python benchmarks/malformed_inputs.py [--files 1000] [--frames 100000]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from collections import Counter
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fuzzing import BENCH, PROTOCOL, mutated  # noqa: E402

from clln.cli import main as clln_main  # noqa: E402
from clln.drivers.wire import crc16, decode_frame  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GOOD_PROTOCOL = ROOT / "protocols" / "demo.toml"
GOOD_BENCH = ROOT / "protocols" / "benches" / "example-16.toml"


def run_cli(args: list[str]) -> tuple[int, str]:
    err, out = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["clln", *args]
    try:
        with redirect_stderr(err), redirect_stdout(out):
            clln_main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        sys.argv = argv
    return code, err.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--frames", type=int, default=100_000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    work = Path(tempfile.mkdtemp())
    codes: Counter[int] = Counter()
    tracebacks = multiline = traffic = valid = 0
    t0 = time.perf_counter()
    protocol_strategy, bench_strategy = mutated(PROTOCOL), mutated(BENCH)
    i = 0
    while sum(codes.values()) < args.files:
        i += 1
        bad_bench = i % 2 == 0
        text = (bench_strategy if bad_bench else protocol_strategy).example()
        path = work / f"f{i}.toml"
        path.write_text(text)
        log = work / f"traffic{i}.jsonl"
        protocol, bench = (GOOD_PROTOCOL, path) if bad_bench else (path, GOOD_BENCH)
        code, err = run_cli(["train", str(protocol), "--bench", str(bench), "--emulate", "--steps", "1",
                             "--traffic-log", str(log), "--out", str(work / "runs")])
        if code == 0:
            valid += 1  # the mutation happened to leave a valid file: not counted
            continue
        codes[code] += 1
        tracebacks += "Traceback" in err
        multiline += err.count("\n") != 1
        written = 0
        if log.exists():
            written = sum(json.loads(x)["channel"] in ("serial-in", "ao") for x in log.read_text().splitlines())
            traffic += written
        if code != 2 or written or "Traceback" in err:
            print(f"  {path}: exit {code}, {written} writes: {err.strip()[:300]}", flush=True)
    print(f"{sum(codes.values())} malformed files ({args.files // 2} protocols, {args.files // 2} benches; "
          f"{valid} valid mutations skipped) in {time.perf_counter() - t0:.0f} s")
    print(f"exit codes {dict(codes)}; tracebacks {tracebacks}; errors not on one line {multiline}; "
          f"bytes or AO levels written to the emulator {traffic}")

    kinds: Counter[str] = Counter()
    accepted = bad_crc = 0
    t0 = time.perf_counter()
    for _ in range(args.frames):
        data = rng.integers(0, 256, rng.integers(0, 64)).astype(np.uint8).tobytes()
        if rng.random() < 0.5:  # also byte strings without zeros, which are valid COBS more often
            data = data.replace(b"\x00", b"\x01")
        try:
            packet = decode_frame(data)
        except Exception as exc:  # noqa: BLE001 - counting every type is the point
            kinds[type(exc).__name__] += 1
            continue
        accepted += 1
        from cobs import cobs

        raw = cobs.decode(data)
        bad_crc += crc16(raw[:-2]) != int.from_bytes(raw[-2:], "big") or len(packet.payload) != len(raw) - 6
    print(f"\n{args.frames} random byte strings in {time.perf_counter() - t0:.1f} s: exceptions {dict(kinds)}; "
          f"frames accepted {accepted}, of which with a bad CRC or length {bad_crc}")


if __name__ == "__main__":
    main()
