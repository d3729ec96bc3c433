"""Files named inside files stay inside their folder, are regular, capped and UTF-8; a
run keeps its edge list; names and file content reach the terminal escaped."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from clln.compose import build_experiment, run_training
from clln.controller.errors import ProtocolError
from clln.controller.store import RunStore
from clln.protocol import load_protocol
from clln.resume import rebuild

ROOT = Path(__file__).resolve().parents[1]
EDGES = "".join(f"{k} {k + 1}\n{k} {k + 4}\n" for k in range(12) if k % 4 != 3) + \
    "".join(f"{k} {k + 1}\n" for k in (12, 13, 14)) + "".join(f"{k} {k + 4}\n" for k in (3, 7, 11))
PROTOCOL = """\
format = 1
name = "edges"
seed = 3

[network]
kind = "edge-list"
file = "{file}"

[task]
kind = "regression"
inputs = 2
outputs = 2
train = 10
test = 10

[training]
alpha = 0.05
steps = 6
test_every = 2
snapshot_every = 2
"""


def protocol(folder: Path, file: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "p.toml"
    path.write_text(PROTOCOL.format(file=file))
    return path


def refused(path: Path) -> str:
    proto, _ = load_protocol(path)
    with pytest.raises(ProtocolError) as err:
        build_experiment(proto, source=str(path), base_dir=path.parent)
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("name", ["../outside.txt", "sub/../../outside.txt", "/etc/os-release", "/dev/zero"])
def test_an_edge_list_outside_the_protocols_folder_is_refused(tmp_path: Path, name: str) -> None:
    (tmp_path / "outside.txt").write_text("SECRET 1\n")
    message = refused(protocol(tmp_path / "p", name))
    assert "network.file" in message and ("absolute path" in message or "leaves the file's folder" in message)
    assert "SECRET" not in message


def test_a_link_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "edges.txt").symlink_to("/dev/zero")
    assert "leaves the file's folder" in refused(protocol(folder, "edges.txt"))


def test_devices_fifos_large_and_binary_files_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    os.mkfifo(tmp_path / "fifo")
    assert "is a FIFO" in refused(protocol(tmp_path, "fifo"))
    (tmp_path / "big.txt").write_text(EDGES * 10)
    monkeypatch.setenv("CLLN_MAX_FILE_BYTES", "400")
    assert "above the 400-byte limit" in refused(protocol(tmp_path, "big.txt"))
    monkeypatch.delenv("CLLN_MAX_FILE_BYTES")
    (tmp_path / "bin.txt").write_bytes(b"0 1\n\xff\xfe\x00\x01")
    assert "not UTF-8 text (byte 0xff at offset 4)" in refused(protocol(tmp_path, "bin.txt"))


def test_an_offending_line_is_quoted_short_and_escaped(tmp_path: Path) -> None:
    (tmp_path / "e.txt").write_text("0 1\n\x1b[2J" + "A" * 5000 + " 3\n")
    message = refused(protocol(tmp_path, "e.txt"))
    assert "e.txt" in message and ":2:" in message
    assert "\x1b" not in message and "\\x1b" in message and len(message) < 400


def test_a_run_keeps_its_edge_list_and_resumes_from_it_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "p"
    (folder).mkdir()
    (folder / "edges.txt").write_text(EDGES)
    path = protocol(folder, "edges.txt")
    proto, text = load_protocol(path)
    exp = build_experiment(proto, source=str(path), base_dir=folder)
    store = RunStore(tmp_path / "runs")
    outcome = run_training(exp, store, protocol_text=text, protocol_path=str(path), should_stop=lambda: True)
    assert outcome.status == "interrupted"
    (folder / "edges.txt").write_text("0 1\n1 2\n")  # changed after the run started ...
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)  # ... and resumed from another directory
    again, _, rec = rebuild(store, outcome.run_id)
    assert again.network.edges.tolist() == exp.network.edges.tolist()
    assert rec["info"]["edge_list"]["text"] == EDGES
    (folder / "edges.txt").unlink()
    rebuild(store, outcome.run_id)  # the file is not needed at all


def test_a_bench_calibration_outside_its_folder_is_one_line(tmp_path: Path) -> None:
    bench = (ROOT / "protocols" / "benches" / "example-16.toml").read_text()
    assert "calibration" not in bench.split("[", 1)[0]
    (tmp_path / "b.toml").write_text(bench.replace("\n[", '\ncalibration = "/dev/zero"\n[', 1))
    out = subprocess.run([sys.executable, "-m", "clln.cli", "check", "b.toml", "--emulate"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert "calibration" in out.stderr and "absolute path" in out.stderr


def test_names_reach_the_terminal_escaped(tmp_path: Path) -> None:
    text = (ROOT / "protocols" / "demo.toml").read_text().replace('name = "demo"', 'name = "x\\u001b[31mred\\u202e"')
    (tmp_path / "p.toml").write_text(text)
    out = subprocess.run([sys.executable, "-m", "clln.cli", "train", "p.toml", "--steps", "2"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "\x1b" not in out.stdout and "\u202e" not in out.stdout
    assert "x\\x1b[31mred\\u202e" in out.stdout
