"""Malformed input never reaches hardware, and the frame parser never lets a bad frame by.

1. 1,000 generated malformed protocol and bench files (random key drops, retyped values,
   unknown keys, garbage), each given to ``clln train PROTOCOL --bench BENCH --emulate
   --traffic-log LOG``: counts exit codes, tracebacks, one-line errors, and anything
   written to the emulator's serial port or analog outputs.
2. 100,000 random byte strings fed to the serial frame decoder: counts the exceptions by
   type and any accepted frame whose CRC does not check.

3. The adversarial corpus (benchmarks/adversarial.py, over 1,000 cases): numeric extremes
   and NaN paths, path and URL tricks, sizes, nesting, encodings, escape sequences,
   damaged run stores. Counts tracebacks, exit-1 outcomes, file writes outside the runs
   folder and library loads (a sentinel folder and a shared library whose constructor
   leaves a mark), raw escape sequences printed, and non-finite commands to the emulator
   (AO rows with a NaN or an infinity; SET_ALL frames with a tap out of range or every
   tap at 0, the mark of a NaN cast to an integer). Cases for serial URLs and VISA
   libraries are counted apart: other parts of the hardening handle them.

Usage: python benchmarks/malformed_inputs.py [--files 1000] [--frames 100000] [--adversarial all]
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
sys.path.insert(0, str(Path(__file__).resolve().parent))
from fuzzing import BENCH, PROTOCOL, mutated  # noqa: E402

from clln.cli import main as clln_main  # noqa: E402
from clln.drivers.wire import crc16, decode_frame  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GOOD_PROTOCOL = ROOT / "protocols" / "demo.toml"
GOOD_BENCH = ROOT / "protocols" / "benches" / "example-16.toml"


def run_cli(args: list[str]) -> tuple[int, str]:
    """Exit code and stderr of ``clln ARGS`` run in this process."""
    code, err, _ = run_cli_full(args)
    return code, err


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--adversarial", default="all", help="'all', 'none' or a number of cases")
    args = parser.parse_args()
    if args.adversarial != "none":
        adversarial(None if args.adversarial == "all" else int(args.adversarial))
    if args.files == 0:
        return
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


def evil_library(folder: Path, marker: Path) -> Path | None:
    """A shared library whose constructor writes ``marker`` (None without a C compiler)."""
    import shutil
    import subprocess

    if shutil.which("gcc") is None:
        return None
    source = folder / "evil.c"
    source.write_text('#include <stdio.h>\n__attribute__((constructor)) static void mark(void) '
                      f'{{ FILE *f = fopen("{marker}", "w"); if (f) {{ fputs("loaded", f); fclose(f); }} }}\n')
    library = folder / "evil.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    return library


def outside_state(outside: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in outside.rglob("*") if p.is_file()}


def bad_commands(log: Path) -> tuple[int, int]:
    """(AO rows with a non-finite level, SET_ALL frames with a tap out of range or all at 0)."""
    from clln.drivers.wire import Cmd

    ao = frames = 0
    if not log.exists():
        return 0, 0
    stream = b""
    for line in log.read_text().splitlines():
        entry = json.loads(line)
        if entry["channel"] == "ao":
            ao += not all(np.isfinite(entry["levels"]))
        elif entry["channel"] == "serial-in":
            stream += bytes.fromhex(entry["data"])
    for frame in stream.split(b"\x00"):
        try:
            packet = decode_frame(frame)
        except Exception:  # noqa: BLE001 - partial frames
            continue
        if packet.cmd == Cmd.SET_ALL and len(packet.payload) >= 4 and len(packet.payload) % 2 == 0:
            taps = np.frombuffer(packet.payload, dtype="<u2")  # little-endian uint16 per pot
            frames += bool(np.all(taps == 0) or taps.max() > 1023)
    return ao, frames


def adversarial(limit: int | None) -> None:
    """Run the adversarial corpus and print its counts."""
    import os

    from adversarial import cases, prepare

    work = Path(tempfile.mkdtemp(prefix="clln-adversarial-"))
    outside = work / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("SECRET-LINE 1 2\n")
    marker = outside / "library-loaded"
    library = evil_library(work, marker)
    os.environ["CLLN_PYTHON"] = sys.executable
    counts: Counter[str] = Counter()
    per_category: Counter[str] = Counter()
    other_failures: Counter[str] = Counter()
    codes: Counter[int] = Counter()
    t0 = time.perf_counter()
    here = Path.cwd()
    all_cases = list(cases(outside, library))[:limit]
    for i, case in enumerate(all_cases):
        folder = work / f"c{i}"
        try:
            prepare(case, folder, outside)
        except Exception as exc:  # noqa: BLE001 - a setup that cannot be made here
            counts["setup skipped"] += 1
            print(f"  case {i} ({case.category}): setup failed: {exc}", flush=True)
            continue
        before = outside_state(outside)
        saved = {k: os.environ.get(k) for k in case.env}
        os.environ.update(case.env)
        os.chdir(folder)
        try:
            code, err, out = run_cli_full(case.args)
        finally:
            os.chdir(here)
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        after = outside_state(outside)
        wrote = before != after
        loaded = marker.exists()
        if loaded:
            marker.unlink()
        ao, frames = bad_commands(folder / "traffic.jsonl")
        raw = any(c in (err + out) for c in ("\x1b", "\x9b", "\u202e", "\x07"))
        secret = "SECRET-LINE" in err + out
        problems = {"traceback": "Traceback" in err, "exit 1": code == 1, "write outside": wrote,
                    "library load": loaded, "raw escape printed": raw, "secret echoed": secret,
                    "non-finite AO rows": ao, "suspect tap frames": frames,
                    "multi-line error": code == 2 and err.strip().count("\n") > 0 and "warning" not in err
                    and not err.startswith("Usage:")}
        counts["usage"] += code == 2 and err.startswith("Usage:")
        codes[code] += 1
        per_category[case.category] += 1
        bad = {k: v for k, v in problems.items() if v}
        if bad:
            if case.other:
                other_failures[case.other] += 1
            else:
                for k, v in bad.items():
                    counts[k] += int(v)
            print(f"  case {i} ({case.category}{', ' + case.other if case.other else ''}) "
                  f"{' '.join(case.args)[:80]!r}: exit {code}, {bad}: {err.strip()[:200]!r}", flush=True)
        if outside.exists():
            for p in outside.iterdir():  # restore the sentinel folder for the next case
                if p.name != "secret.txt":
                    p.unlink() if p.is_file() else None
    n = len(all_cases)
    print(f"\nadversarial corpus: {n} cases in {time.perf_counter() - t0:.0f} s; "
          f"{dict(per_category)}")
    print(f"exit codes {dict(codes)}")
    keys = ["traceback", "exit 1", "write outside", "library load", "raw escape printed", "secret echoed",
            "non-finite AO rows", "suspect tap frames", "multi-line error"]
    print("outside serial/VISA cases: " + "; ".join(f"{k} {counts[k]}" for k in keys)
          + f"; usage errors in click's own 3-line format {counts['usage']}")
    print(f"serial-URL and VISA-library cases failing on this branch: {dict(other_failures) or 0} "
          f"(of {sum(1 for c in all_cases if c.other)})", flush=True)


def run_cli_full(args: list[str]) -> tuple[int, str, str]:
    """Exit code, stderr and stdout of ``clln ARGS`` run in this process."""
    err, out = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["clln", *args]
    try:
        with redirect_stderr(err), redirect_stdout(out):
            clln_main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0) if not isinstance(exc.code, str) else 1
    except BaseException as exc:  # noqa: BLE001 - an escape from main() is a traceback
        code, err = 1, io.StringIO(f"Traceback (escaped main): {type(exc).__name__}: {exc}")
    finally:
        sys.argv = argv
    return code, err.getvalue(), out.getvalue()


if __name__ == "__main__":
    main()
