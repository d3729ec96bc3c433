"""Adversarial cases for benchmarks/malformed_inputs.py: harsher than random mutation.

Each case is a small folder (protocol, bench, side files) and one clln command line.
Categories: numeric extremes that pass type checks (1e300, 5e-324, nan, inf, 2**63...)
on the simulator and on the emulated bench, path tricks for edge lists and
calibrations, serial-port URLs and VISA libraries (other parts of the hardening),
sizes, nesting, encodings, escape sequences in names, damaged run stores, sweeps.
"""

from __future__ import annotations

import os
import subprocess
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w

ROOT = Path(__file__).resolve().parents[1]
DEMO = tomllib.loads((ROOT / "protocols" / "demo.toml").read_text())
BENCH_PROTOCOL = tomllib.loads((ROOT / "protocols" / "bench-regression-2x2.toml").read_text())
BENCH = tomllib.loads((ROOT / "protocols" / "benches" / "example-16.toml").read_text())
EDGES = "".join(f"{k} {k + 1}\n" for k in range(8)) + "0 8\n2 6\n"

EXTREMES: list[Any] = [1e300, -1e300, 5e-324, -5e-324, 1.7976931348623157e308, float("nan"), float("inf"),
                       float("-inf"), 2**63, 2**64, -(2**63), 0, -0.0, 1e-308, 1e30, 10**18]
NUMERIC_KEYS = ["seed", "edges.gmin", "edges.gmax", "task.train", "task.test", "task.inputs",
                "task.outputs", "task.spread", "task.high_ground", "task.target_high",
                "training.alpha", "training.eta", "training.batch", "training.steps", "training.test_every",
                "training.snapshot_every", "training.target_error", "training.threshold", "training.step",
                "training.backoff", "network.rows", "network.cols", "simulator.bench_seed",
                "simulator.parameters.ai_noise_rms", "simulator.parameters.tolerance",
                "simulator.parameters.ai_range", "simulator.parameters.learning_bias",
                "simulator.parameters.source_impedance", "training.scheme.overclamp.eta",
                "training.scheme.overclamp.noise_margin", "training.scheme.auto-zero.every"]
PATH_TRICKS = ["../outside/secret.txt", "../../outside/secret.txt", "sub/../../outside/secret.txt",
               "/etc/os-release", "/etc/passwd", "/dev/zero", "/dev/urandom", "/proc/self/environ",
               "fifo", "link-out", "link-zero", "big.txt", "bin.txt", "utf16.txt", "escape.txt", "sub",
               "", "~/.bashrc", "file:///etc/passwd", "\\\\server\\share\\x", "edges.txt\u0000x",
               "nan.txt", "huge-index.txt", "./edges.txt", "sub/../edges.txt"]
SERIAL_URLS = ["spy://{outside}/spy.txt?file={outside}/spy-log.txt", "socket://127.0.0.1:9",
               "rfc2217://127.0.0.1:9", "loop://", "hwgrep://.*", "alt:///dev/ttyS0?class=Serial",
               "spy://loop://?file={outside}/spy2.txt", "cp2110://0", "/dev/null", "COM1"]
NAMES = ["\x1b[2J\x1b[H", "\x1b]0;owned\x07", "a\rb", "x\u202egnp.exe", "\x00nul", "\x9b31m", "tab\there",
         "[red]markup[/red]", "line\nbreak", "\u200bzero-width"]


@dataclass
class Case:
    category: str
    args: list[str]
    files: dict[str, bytes] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    setup: str = ""        # a named extra setup step (fifo, links, damaged store)
    other: str = ""        # the part of the hardening that handles it elsewhere ("serial", "visa")


def _set(doc: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    import copy

    doc = copy.deepcopy(doc)
    parts = key.split(".")
    inner = doc
    for p in parts[:-1]:
        inner = inner.setdefault(p, {})
    inner[parts[-1]] = value
    return doc


def _toml(doc: dict[str, Any]) -> bytes:
    text = tomli_w.dumps(doc)
    return text.encode()


def _with_scheme(doc: dict[str, Any], key: str) -> dict[str, Any]:
    if key.startswith("training.scheme.overclamp"):
        doc = _set(doc, "training.scheme.overclamp.margin", 0.0)
    return doc


def cases(outside: Path, evil_library: Path | None) -> Iterator[Case]:
    """Every adversarial case (deterministic)."""
    rng = np.random.default_rng(17)
    # 1. numeric extremes on the simulator (the demo) and on the emulated bench
    for key in NUMERIC_KEYS:
        for value in EXTREMES:
            doc = _with_scheme(_set(DEMO, key, value), key)
            doc = _set(doc, "training.steps", 3) if key != "training.steps" else doc
            yield Case("extremes (simulator)", ["train", "p.toml", "--out", "runs"], {"p.toml": _toml(doc)})
    for key in [k for k in NUMERIC_KEYS if not k.startswith(("network", "simulator"))]:
        for value in EXTREMES[:10]:
            doc = _with_scheme(_set(BENCH_PROTOCOL, key, value), key)
            doc = _set(doc, "training.steps", 2) if key != "training.steps" else doc
            yield Case("extremes (emulated bench)", ["train", "p.toml", "--bench", "b.toml", "--emulate",
                                                     "--traffic-log", "traffic.jsonl", "--out", "runs"],
                       {"p.toml": _toml(doc), "b.toml": _toml(BENCH)})
    for key in ["limits.max_node_voltage", "limits.max_edge_current", "serial.baudrate", "serial.retries",
                "serial.reply_timeout", "serial.watchdog_ms", "pots.r_ab", "pots.r_series", "daq.sample_rate",
                "daq.average_samples", "daq.ai_range", "smu.current", "emulator.seed"]:
        for value in EXTREMES:
            yield Case("bench extremes", ["train", "p.toml", "--bench", "b.toml", "--emulate", "--steps", "2",
                                          "--traffic-log", "traffic.jsonl", "--out", "runs"],
                       {"p.toml": _toml(BENCH_PROTOCOL), "b.toml": _toml(_set(BENCH, key, value))})
    # 2. edge-list paths and contents
    for trick in PATH_TRICKS:
        for prefix in ("", "./"):
            doc = {k: v for k, v in DEMO.items() if k != "network"}
            doc["network"] = {"kind": "edge-list", "file": prefix + trick if not trick.startswith("/") else trick}
            doc["task"] = {k: v for k, v in DEMO["task"].items() if not k.endswith("_nodes")}
            doc = _set(doc, "training.steps", 3)
            env = {"CLLN_MAX_FILE_BYTES": "2000"} if trick == "big.txt" else {}
            yield Case("edge-list paths", ["train", "p.toml", "--out", "runs"], {"p.toml": _toml(doc)}, env,
                       setup="paths")
    # 3. calibration paths in a bench file
    for trick in PATH_TRICKS:
        for command in (["check", "b.toml", "--emulate"],
                        ["train", "p.toml", "--bench", "b.toml", "--emulate", "--steps", "2",
                         "--traffic-log", "traffic.jsonl", "--out", "runs"]):
            yield Case("calibration paths", command, {"b.toml": _toml(_set(BENCH, "calibration", trick)),
                                                      "p.toml": _toml(BENCH_PROTOCOL)}, setup="paths")
    # 4. serial-port URLs and VISA libraries (handled by the serial and VISA hardening)
    for url in SERIAL_URLS:
        port = url.format(outside=outside)
        for command in (["check", "b.toml"], ["train", "p.toml", "--bench", "b.toml", "--steps", "2",
                                               "--out", "runs"]):
            yield Case("serial URLs", command, {"b.toml": _toml(_set(BENCH, "serial.port", port)),
                                                "p.toml": _toml(BENCH_PROTOCOL)}, other="serial")
    libraries = [str(evil_library)] if evil_library else []
    libraries += [f"{evil_library}@py" if evil_library else "x@py", "../../outside/lib.so", "/lib/x.so", "@ivi"]
    for library in libraries:
        yield Case("VISA libraries", ["calibrate", "b.toml", "--emulate", "--edges", "0", "--levels", "3"],
                   {"b.toml": _toml(_set(BENCH, "smu.visa_library", library))}, other="visa")
    # 5. sizes
    sizes = [("network.rows", 10**6), ("network.cols", 10**6), ("task.train", 10**6), ("task.test", 10**6),
             ("task.inputs", 10**6), ("edges.taps", 10**6), ("training.batch", 10**6),
             ("training.steps", 10**9), ("task.outputs", 10**5)]
    for (key, value) in sizes:
        for scale in (1, 10, 100, 1000):
            doc = _set(DEMO, key, value * scale if isinstance(value, int) else value)
            if key == "edges.taps":
                doc = _set(_set(doc, "edges", {"kind": "stepped", "taps": value * scale}), "training.rule", "stepped")
            yield Case("sizes", ["train", "p.toml", "--out", "runs"], {"p.toml": _toml(doc)},
                       env={"CLLN_MAX_HOURS": "1"})
    for nodes in (10**5, 10**6, 10**7, 10**8, 10**9):
        for kind in ("delaunay", "jammed"):
            doc = {k: v for k, v in DEMO.items() if k != "network"}
            doc["network"] = {"kind": kind, "nodes": nodes}
            doc["task"] = {k: v for k, v in DEMO["task"].items() if not k.endswith("_nodes")}
            for cap in ("1e9", "1e6"):
                yield Case("sizes", ["train", "p.toml", "--out", "runs"], {"p.toml": _toml(doc)},
                           env={"CLLN_MAX_MEMORY_BYTES": cap, "CLLN_MAX_HOURS": "0.01"})
    for big in (10**6, 10**7):
        text = f'format = 1\nname = "s"\nprotocol = "p.toml"\n[grid]\n"training.eta" = [{", ".join(["0.1"] * 10)}]\n'
        text += f'"training.alpha" = [{", ".join(str(0.01 + i * 1e-9) for i in range(big // 10))}]\n'
        yield Case("sizes", ["sweep", "s.toml", "--scheduler", "tcp://127.0.0.1:9", "--out", "runs"],
                   {"s.toml": text.encode(), "p.toml": _toml(_set(DEMO, "training.steps", 2))})
    for seed in (2**63, 2**64, -1):
        yield Case("sizes", ["train", str(ROOT / "protocols" / "demo.toml"), "--seed", str(seed), "--out", "runs"])
        yield Case("sizes", ["train", str(ROOT / "protocols" / "demo.toml"), "--steps", str(seed), "--out", "runs"])
    # 6. nesting
    for depth in (40, 200, 1000, 5000, 50000):
        for shape in ("array", "inline", "table"):
            if shape == "array":
                body = "x = " + "[" * depth + "]" * depth + "\n"
            elif shape == "inline":
                body = "x = " + "{a = " * depth + "1" + "}" * depth + "\n"
            else:
                body = "[" + ".".join(["a"] * min(depth, 5000)) + "]\nb = 1\n"
            for what in ("protocol", "bench", "sweep"):
                text = f'format = 1\nname = "n"\n{body}'.encode()
                args = {"protocol": ["train", "f.toml", "--out", "runs"],
                        "bench": ["check", "f.toml", "--emulate"],
                        "sweep": ["sweep", "f.toml", "--scheduler", "tcp://127.0.0.1:9", "--out", "runs"]}[what]
                yield Case("nesting", args, {"f.toml": text})
    for depth in (100, 10000, 100000):
        cal = ("[" * depth + "]" * depth).encode()
        yield Case("nesting", ["check", "b.toml", "--emulate"],
                   {"b.toml": _toml(_set(BENCH, "calibration", "cal.json")), "cal.json": cal})
    # 7. encodings
    demo_text = (ROOT / "protocols" / "demo.toml").read_text()
    encodings = {"utf-16": demo_text.encode("utf-16"), "utf-16-le": demo_text.encode("utf-16-le"),
                 "bom": b"\xef\xbb\xbf" + demo_text.encode(), "latin1": demo_text.replace("demo", "d\xe9mo").encode("latin-1"),
                 "nul": demo_text.encode().replace(b"\n", b"\x00\n", 1), "overlong": b"name = \"\xc0\xaf\"\n" + demo_text.encode(),
                 "surrogate": b"\xed\xa0\x80" + demo_text.encode(), "cp1252": demo_text.replace("demo", "d\u2019mo").encode("cp1252"),
                 "utf-32": demo_text.encode("utf-32"), "random": rng.integers(0, 256, 4000).astype(np.uint8).tobytes()}
    for name, data in encodings.items():
        for command in (["train", "f.toml", "--out", "runs", "--steps", "2"], ["check", "f.toml", "--emulate"],
                        ["sweep", "f.toml", "--scheduler", "tcp://127.0.0.1:9", "--out", "runs"]):
            yield Case("encodings", command, {"f.toml": data})
        doc = {k: v for k, v in DEMO.items() if k != "network"}
        doc["network"] = {"kind": "edge-list", "file": "e.txt"}
        doc["task"] = {k: v for k, v in DEMO["task"].items() if not k.endswith("_nodes")}
        yield Case("encodings", ["train", "p.toml", "--out", "runs", "--steps", "2"],
                   {"p.toml": _toml(doc), "e.txt": data})
    # 8. names and strings with escape sequences
    for name in NAMES:
        for key in ("name", "description"):
            yield Case("escapes", ["train", "p.toml", "--out", "runs", "--steps", "2"],
                       {"p.toml": _toml(_set(DEMO, key, name))})
        yield Case("escapes", ["check", "b.toml", "--emulate"], {"b.toml": _toml(_set(BENCH, "name", name))})
        yield Case("escapes", ["train", "p.toml", "--out", "runs", "--steps", "2"],
                   {"p.toml": _toml(_set(DEMO, "training.rule", name))})
        yield Case("escapes", ["show", name, "--out", "runs"], setup="store")
        yield Case("escapes", ["train", name + ".toml", "--out", "runs"])
    # 9. run stores: damaged, truncated, wrong ids
    for damage in ("garbage", "truncated", "empty", "directory", "text"):
        for command in (["runs", "--out", "runs"], ["show", "latest", "--out", "runs"],
                        ["show", "latest", "--json", "--out", "runs"], ["resume", "latest", "--out", "runs"],
                        ["report", "latest", "--out", "runs"], ["export", "latest", "x.h5", "--out", "runs"],
                        ["train", str(ROOT / "protocols" / "demo.toml"), "--steps", "2", "--out", "runs"]):
            yield Case("run stores", command, setup=f"store-{damage}")
    for run in ("", "x" * 5000, "%", "_", "latest' OR 1=1 --", "\x1b[2J"):
        for command in ("show", "resume", "report", "analyze"):
            yield Case("run stores", [command, run, "--out", "runs"], setup="store")


def prepare(case: Case, folder: Path, outside: Path) -> None:
    """Write a case's files and run its setup step in ``folder``."""
    folder.mkdir(parents=True)
    for name, data in case.files.items():
        (folder / name).write_bytes(data)
    if case.setup == "paths":
        (folder / "edges.txt").write_text(EDGES)
        (folder / "sub").mkdir()
        os.mkfifo(folder / "fifo")
        (folder / "link-out").symlink_to(outside / "secret.txt")
        (folder / "link-zero").symlink_to("/dev/zero")
        (folder / "big.txt").write_text(EDGES * 200)
        (folder / "bin.txt").write_bytes(b"0 1\n\xff\xfe\x00\x01\x02")
        (folder / "utf16.txt").write_bytes(EDGES.encode("utf-16"))
        (folder / "escape.txt").write_text("0 1\n\x1b]0;owned\x07\x1b[2J" + "A" * 3000 + "\n")
        (folder / "nan.txt").write_text(EDGES + "node 0 nan inf\n")
        (folder / "huge-index.txt").write_text(EDGES + f"0 {10**15}\n")
    if case.setup.startswith("store"):
        runs = folder / "runs"
        subprocess.run([os.environ.get("CLLN_PYTHON", "python3"), "-m", "clln.cli", "train",
                        str(ROOT / "protocols" / "demo.toml"), "--steps", "3", "--out", str(runs)],
                       capture_output=True, cwd=folder, timeout=300, check=True)
        db = runs / "runs.sqlite"
        for extra in ("runs.sqlite-wal", "runs.sqlite-shm"):
            (runs / extra).unlink(missing_ok=True)
        damage = case.setup.removeprefix("store-")
        data = db.read_bytes()
        if damage == "garbage":
            db.write_bytes(bytes(np.random.default_rng(len(data)).integers(0, 256, 8192).astype(np.uint8)))
        elif damage == "truncated":
            db.write_bytes(data[: len(data) // 3])
        elif damage == "empty":
            db.write_bytes(b"")
        elif damage == "directory":
            db.unlink()
            db.mkdir()
        elif damage == "text":
            db.write_text("SQLite format 3\x00 but not really\n" * 50)
