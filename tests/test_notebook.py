"""The lab notebook: [meta] and its command-line options, provenance found automatically,
the events table; all shown by ``clln show`` and kept in exports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy

from clln.controller.store import RunStore
from tests.conftest import PROTOCOLS
from tests.test_cli_help import clln as run_cli

pytestmark = pytest.mark.slow  # subprocesses or long runs: left out of -m "not slow"

CLLN = [sys.executable, "-m", "clln.cli"]


def _git(folder: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}
    return subprocess.run(["git", "-C", str(folder), *args], check=True, capture_output=True,
                          text=True, env=env).stdout.strip()


@pytest.fixture(scope="module")
def noted_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A demo run from a protocol in its own git repository, with [meta] and options."""
    d = tmp_path_factory.mktemp("notebook")
    lab = d / "lab"
    lab.mkdir()
    text = (PROTOCOLS / "demo.toml").read_text().replace("steps = 400", "steps = 60")
    text += '\n[meta]\noperator = "Grace"\nsample = "lattice 5x5 #3"\ntags = ["demo"]\n'
    (lab / "p.toml").write_text(text)
    _git(lab, "init", "-q")
    _git(lab, "add", "p.toml")
    _git(lab, "commit", "-qm", "protocol")
    commit = _git(lab, "rev-parse", "HEAD")
    out = d / "runs"
    res = subprocess.run([*CLLN, "train", str(lab / "p.toml"), "--out", str(out), "--operator", "Ada",
                          "--tag", "first", "--tag", "demo", "--note", "new [bold]sample[/]"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    with RunStore(out) as store:
        run_id = store.resolve("latest")
    return out, run_id, commit


def test_meta_and_provenance_recorded(noted_run: tuple[Path, str, str]) -> None:
    out, run_id, commit = noted_run
    res = run_cli("show", run_id, "--out", out, "--json")
    s = json.loads(res.stdout)
    assert s["meta"] == {"operator": "Ada", "sample": "lattice 5x5 #3", "bench_serial": "",
                         "notes": "new [bold]sample[/]", "tags": ["demo", "first"]}
    prov = s["provenance"]
    assert prov["git"]["commit"] == commit and prov["git"]["dirty"] is False
    assert prov["packages"]["numpy"] == np.__version__
    assert prov["packages"]["scipy"] == scipy.__version__
    assert prov["python"] == ".".join(map(str, sys.version_info[:3]))
    assert prov["host"] == os.uname().nodename


def test_show_prints_the_notebook_and_the_protocol_only_on_request(
        noted_run: tuple[Path, str, str]) -> None:
    out, run_id, commit = noted_run
    plain = run_cli("show", run_id, "--out", out).stdout
    assert "Ada" in plain and "new [bold]sample[/]" in plain  # markup shown as typed
    assert commit[:12] in plain and "first" in plain
    assert "[network]" not in plain
    full = run_cli("show", run_id, "--out", out, "--protocol").stdout
    assert "[network]" in full and 'operator = "Grace"' in full


def test_event_log_api(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    run_id = store.create_run(name="x", protocol_text="", protocol_path=None, version="0", seed=0,
                              backend={}, info={}, steps_planned=3, initial_state=np.zeros(2))
    store.log_event(run_id, "retry", "serial frame retried", step=2, data={"attempt": 1})
    store.log_event(run_id, "watchdog", "watchdog tripped")
    events = store.events(run_id)
    assert [(e["kind"], e["step"], e["data"]) for e in events] == [
        ("retry", 2, {"attempt": 1}), ("watchdog", None, None)]
    assert store.events(run_id, after=events[0]["id"]) == events[1:]
    with pytest.raises(ValueError, match="allowed: retry"):
        store.log_event(run_id, "bogus", "x")
    store.close()


def test_meta_keys_validated(tmp_path: Path) -> None:
    text = (PROTOCOLS / "demo.toml").read_text() + '\n[meta]\noperater = "x"\n'
    (tmp_path / "p.toml").write_text(text)
    res = run_cli("train", tmp_path / "p.toml", "--out", tmp_path / "r")
    assert res.returncode == 2
    assert "meta.operater" in res.stderr and "operator" in res.stderr
    assert "Traceback" not in res.stderr


def test_bench_provenance(tmp_path: Path) -> None:
    """On the emulated bench: the firmware's HELLO identity and the bench file's SHA-256."""
    import hashlib

    bench = PROTOCOLS / "benches" / "example-16.toml"
    out = tmp_path / "runs"
    res = run_cli("train", PROTOCOLS / "demo.toml", "--bench", bench, "--emulate", "--steps", 3,
                  "--out", out, "--tag", "bench")
    assert res.returncode == 0, res.stderr
    s = json.loads(run_cli("show", "latest", "--out", out, "--json").stdout)
    prov = s["provenance"]
    assert prov["bench_sha256"] == hashlib.sha256(bench.read_bytes()).hexdigest()
    assert prov["firmware"]["name"] == "clln bench emulator"
    from clln.simulator.bench import VERSION

    assert prov["firmware"]["version"] == ".".join(map(str, VERSION))  # what HELLO reported
    assert s["meta"]["tags"] == ["bench"]
