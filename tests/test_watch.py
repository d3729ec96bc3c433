"""The live dashboard in a real browser: a training run in one process, ``clln watch`` in
another, headless Debian chromium driving the page; and the store's control requests.

``CLLN_UPDATE_SCREENSHOTS=1`` writes the two screenshots to ``docs/`` (the documentation's
copies); otherwise they go to the test's temporary folder."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from clln.controller.store import RunStore
from tests.conftest import PROTOCOLS, ROOT, require_tool

pytestmark = pytest.mark.slow  # subprocesses or long runs: left out of -m "not slow"

CLLN = [sys.executable, "-m", "clln.cli"]
DOCS = ROOT / "docs"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(predicate, timeout: float, what: str):  # noqa: ANN001, ANN202
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _running_run(out: Path) -> str | None:
    if not (out / "runs.sqlite").exists():
        return None
    with RunStore(out) as store:
        runs = store.list_runs()
        return runs[-1]["id"] if runs and runs[-1]["steps_done"] > 0 else None


def _status(out: Path, run_id: str) -> dict:
    with RunStore(out) as store:
        return store.run(run_id)


def _browser(profile: str):  # noqa: ANN202
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={profile}", "--window-size=1500,1250"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)


# The page's own data: the Bokeh document's "train" source, as the browser holds it.
STEPS_JS = """
const doc = (window.Bokeh && Bokeh.documents.length) ? Bokeh.documents[0] : null;
if (!doc) return -1;
const src = doc.get_model_by_name('train');
if (!src || !src.data.step || src.data.step.length == 0) return 0;
return Math.max(...src.data.step);
"""

# Bokeh draws its widgets inside nested shadow roots: find the <button> with this label.
FIND_BUTTON_JS = """
const label = arguments[0];
function walk(root) {
  for (const el of root.querySelectorAll('*')) {
    if (el.tagName === 'BUTTON' && el.textContent.trim() === label) return el;
    if (el.shadowRoot) { const found = walk(el.shadowRoot); if (found) return found; }
  }
  return null;
}
return walk(document);
"""


def test_dashboard_follows_a_run_and_stops_it(tmp_path: Path) -> None:
    require_tool("chromium", "chromedriver")
    out = tmp_path / "runs"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    train_log = open(tmp_path / "train.log", "w")  # noqa: SIM115  (as under nohup)
    trainer = subprocess.Popen([*CLLN, "train", str(PROTOCOLS / "demo.toml"), "--out", str(out),
                                "--steps", "1000000", "--log-file", str(tmp_path / "run.log")],
                               stdout=train_log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, env=env, cwd=tmp_path,
                               start_new_session=True)
    port = _free_port()
    watcher = None
    driver = None
    try:
        run_id = _wait(lambda: _running_run(out), 60, "the run's first step")
        watcher = subprocess.Popen([*CLLN, "watch", run_id, "--out", str(out), "--port", str(port)],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   env=env, cwd=tmp_path)
        first = watcher.stdout.readline()
        assert first.startswith("dashboard: http://127.0.0.1:"), first
        url = first.split(" ", 1)[1].strip()
        driver = _browser(tempfile.mkdtemp(prefix="clln-chromium-", dir=tmp_path))
        driver.get(url)
        n1 = _wait(lambda: driver.execute_script(STEPS_JS) > 0, 30, "the page's first data")
        n1 = driver.execute_script(STEPS_JS)
        time.sleep(0.6)  # let the network and log panes draw
        shots = DOCS if os.environ.get("CLLN_UPDATE_SCREENSHOTS") else tmp_path
        driver.save_screenshot(str(shots / "watch-1.png"))
        time.sleep(2)
        n2 = driver.execute_script(STEPS_JS)
        driver.save_screenshot(str(shots / "watch-2.png"))
        assert n2 > n1 > 0, (n1, n2)
        header = driver.execute_script(
            "return Bokeh.documents[0].get_model_by_name('header').text")
        assert run_id in header and "running" in header

        # the stop button, clicked in the page, acts through the store on the other process
        stop = driver.execute_script(FIND_BUTTON_JS, "stop")
        assert stop is not None and stop.text.strip() == "stop"
        stop.click()  # a real click, through chromedriver
        code = trainer.wait(timeout=60)
        assert code == 130  # interrupted, resumable
        rec = _status(out, run_id)
        assert rec["status"] == "interrupted"
        stopped_at = int(rec["steps_done"])
        assert n2 <= stopped_at < 1000000
        print(f"\npage data: step {n1} at the first screenshot, {n2} at the second; "
              f"stopped from the page at step {stopped_at} (interrupted)")
        check_progress_lines(tmp_path, run_id, stopped_at)
        with RunStore(out) as store:
            kinds = [e["kind"] for e in store.events(run_id)]
            assert "stop" in kinds
            assert store.checkpoint(run_id)[0] == stopped_at
        _wait(lambda: "interrupted" in driver.execute_script(
            "return Bokeh.documents[0].get_model_by_name('header').text"), 10, "the page to say so")

        # resumable: the run continues from its checkpoint (here in this process)
        from clln.compose import resume_training
        from clln.resume import rebuild

        with RunStore(out) as store:
            exp, session, _ = rebuild(store, run_id)
            assert session is None
            seen: list[int] = []
            again = resume_training(exp, store, run_id, callbacks=[lambda r: seen.append(r.step)],
                                    should_stop=lambda: len(seen) >= 5)
            assert again.status == "interrupted" and seen == list(range(stopped_at + 1,
                                                                         stopped_at + 6))
            kinds = [e["kind"] for e in store.events(run_id)]
        assert kinds[-3:] == ["stop", "resume-point", "stop"]  # the page's, then this one
        print(f"resumed from step {stopped_at}: steps {seen[0]}..{seen[-1]} ran")
    finally:
        if driver is not None:
            driver.quit()
        for proc in (trainer, watcher):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        train_log.close()


def test_pause_resume_stop_through_the_store(tmp_path: Path) -> None:
    """In-process: a pause request holds the trainer at a step boundary (backend made safe)
    until a resume; a stop request ends the run interrupted; every request is logged."""
    import threading

    from clln.compose import build_experiment, run_training
    from clln.protocol import load_protocol

    proto, text = load_protocol(PROTOCOLS / "demo.toml")
    exp = build_experiment(proto, source="demo", base_dir=PROTOCOLS, steps=100000)
    safe_calls: list[float] = []
    original_safe = exp.backend.safe

    def safe() -> None:
        safe_calls.append(time.monotonic())
        original_safe()

    exp.backend.safe = safe  # type: ignore[method-assign]
    store = RunStore(tmp_path)
    started: list[str] = []
    result: dict = {}

    def train() -> None:
        result["outcome"] = run_training(exp, RunStore(tmp_path), protocol_text=text,
                                         protocol_path="demo", on_start=started.append)

    worker = threading.Thread(target=train)
    worker.start()
    run_id = _wait(lambda: started and started[0], 30, "the run")
    _wait(lambda: store.progress(run_id)["steps_done"] > 5, 30, "first steps")
    store.request(run_id, "pause")
    _wait(lambda: any(e["kind"] == "pause" for e in store.events(run_id)), 30, "the pause")
    held = store.progress(run_id)["steps_done"]
    time.sleep(1.0)
    assert store.progress(run_id)["steps_done"] == held  # no step while paused
    assert safe_calls  # outputs made safe at the pause
    store.request(run_id, "resume")
    _wait(lambda: store.progress(run_id)["steps_done"] > held + 5, 30, "steps after resume")
    from tests.test_cli_help import clln as run_cli

    res = run_cli("control", run_id[:12], "stop", "--out", tmp_path)  # as from another terminal
    assert res.returncode == 0 and f"stop requested for run {run_id}" in res.stdout
    worker.join(timeout=60)
    assert result["outcome"].status == "interrupted"
    assert run_cli("control", run_id, "pause", "--out", tmp_path).returncode == 2  # not running
    events = store.events(run_id)
    assert [e["kind"] for e in events] == ["pause", "resume", "stop"]
    assert events[0]["step"] == held
    assert store.pending(run_id) is None
    with pytest.raises(Exception, match="allowed: pause, resume, stop"):
        store.request(run_id, "explode")
    store.close()



def check_progress_lines(folder: Path, run_id: str, stopped_at: int) -> None:
    """Output redirected to a file (as under nohup): a progress line at least every 10 s,
    with step, errors and ETA; --log-file gets the same lines plus the event log."""
    import re
    from datetime import datetime

    text = (folder / "train.log").read_text()
    pattern = re.compile(r"^(\S+Z) run (\S+) step (\d+)/1000000 error (\S+) test (\S+) .* eta (\S+)$",
                         re.M)
    found = pattern.findall(text)
    assert len(found) >= 2, text
    stamps = [datetime.fromisoformat(m[0].replace("Z", "+00:00")) for m in found]
    gaps = [(b - a).total_seconds() for a, b in zip(stamps, stamps[1:])]
    assert max(gaps) <= 10, gaps
    print(f"progress lines under redirection: {len(found)}, gaps {gaps} s")
    assert all(m[1] == run_id for m in found)
    steps = [int(m[2]) for m in found]
    assert steps == sorted(steps) and steps[-1] == stopped_at
    assert "\x1b[" not in text  # no terminal control codes in a file
    logged = (folder / "run.log").read_text()
    assert pattern.findall(logged) == found
    assert re.search(rf"run {run_id} event stop at step \d+: stop requested", logged), logged


def test_pages_hold_the_store_data(tmp_path: Path) -> None:
    """The run page's sources equal the store's records; the sweep page lists its runs."""
    from bokeh.document import Document

    from clln.compose import build_experiment, run_training
    from clln.protocol import load_protocol
    from clln.watch import run_document, runs_document

    proto, text = load_protocol(PROTOCOLS / "demo.toml")
    exp = build_experiment(proto, source="demo", base_dir=PROTOCOLS, steps=120)
    with RunStore(tmp_path) as store:
        run_id = run_training(exp, store, protocol_text=text, protocol_path="demo",
                              extra_info={"sweep": {"name": "s1", "index": 0, "seed": 1,
                                                    "parameters": {"training.eta": 0.1}}}).run_id
        store.log_event(run_id, "retry", "serial command 0x03 resent (attempt 2)")
        hist, rec = store.history(run_id), store.run(run_id)
    doc = Document()
    run_document(doc, tmp_path, run_id)
    train = doc.get_model_by_name("train").data
    np.testing.assert_array_equal(train["step"], hist.steps)
    np.testing.assert_array_equal(train["error"], hist.error)
    np.testing.assert_array_equal(train["nudge"], hist.nudge)
    test = doc.get_model_by_name("test").data
    np.testing.assert_array_equal(test["step"], hist.test_steps[hist.test_steps > 0])
    np.testing.assert_array_equal(doc.get_model_by_name("edges").data["g"], hist.snapshots[-1])
    np.testing.assert_array_equal(hist.snapshots[-1], rec["final_state"])
    assert doc.get_model_by_name("events").data["kind"] == ["retry"]
    assert "serial retries</b> 1" in doc.get_model_by_name("bench").text
    assert "completed" in doc.get_model_by_name("header").text

    sweep_doc = Document()
    runs_document(sweep_doc, tmp_path, "s1")
    rows = sweep_doc.get_model_by_name("runs").data
    assert rows["id"] == [run_id] and rows["x"] == [0.1]
    assert rows["final_test_error"] == [hist.test_error[-1]]
    empty = Document()
    runs_document(empty, tmp_path, "no-such-sweep")
    assert empty.get_model_by_name("runs").data["id"] == []
    unknown = Document()
    run_document(unknown, tmp_path, "no-such-run")
    assert "no run &#x27;no-such-run&#x27;" in unknown.get_model_by_name("header").text  # escaped


def test_token_required_off_the_local_host(tmp_path: Path) -> None:
    import urllib.error
    import urllib.request

    with RunStore(tmp_path) as store:
        store.create_run(name="x", protocol_text="", protocol_path=None, version="0", seed=0,
                         backend={}, info={"n_nodes": 3, "n_edges": 0, "edges": []},
                         steps_planned=1, initial_state=np.zeros(0))
    port = _free_port()
    proc = subprocess.Popen([*CLLN, "watch", "latest", "--out", str(tmp_path), "--port", str(port),
                             "--host", "0.0.0.0", "--token", "s3cret"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        first = proc.stdout.readline()
        assert first.startswith("dashboard: ") and "token=s3cret" in first, first
        base = f"http://127.0.0.1:{port}"
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(f"{base}/run?id=latest", timeout=20)
        assert denied.value.code == 403
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"{base}/run?id=latest&token=wrong", timeout=20)
        with urllib.request.urlopen(f"{base}/run?id=latest&token=s3cret", timeout=20) as page:
            assert page.status == 200 and b"bokeh" in page.read()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_a_paused_bench_run_keeps_its_taps(tmp_path: Path) -> None:
    """On the emulated bench (controller watchdog 300 ms), a pause of 1.2 s: the host keeps
    the controller alive, its pots are never parked, and the run resumes where it was."""
    import threading

    from clln.benchfile import load_bench
    from clln.benchrun import bench_experiment
    from clln.compose import run_training
    from clln.protocol import parse_protocol

    text = (PROTOCOLS / "benches" / "example-16.toml").read_text()
    text = text.replace("watchdog_ms = 2000", "watchdog_ms = 300")
    bench_path = tmp_path / "bench.toml"
    bench_path.write_text(text)
    bench, bench_text = load_bench(bench_path)
    proto_text = (PROTOCOLS / "demo.toml").read_text()
    exp, session = bench_experiment(parse_protocol(proto_text, "demo.toml"), bench, bench_text,
                                    source="demo.toml", bench_source=str(bench_path),
                                    target="emulate", steps=100000)
    firmware = session.emulator.firmware
    store = RunStore(tmp_path / "runs")
    started: list[str] = []
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(outcome=run_training(
        exp, RunStore(tmp_path / "runs"), protocol_text=proto_text, protocol_path=None,
        on_start=started.append)))
    try:
        worker.start()
        run_id = _wait(lambda: started and started[0], 60, "the run")
        _wait(lambda: store.progress(run_id)["steps_done"] >= 2, 60, "first steps")
        store.request(run_id, "pause")
        _wait(lambda: any(e["kind"] == "pause" for e in store.events(run_id)), 60, "the pause")
        with firmware.lock:
            taps = firmware.taps.copy()
        time.sleep(1.2)
        firmware.tick()  # the watchdog's own check, as the firmware's loop makes it
        with firmware.lock:
            assert not firmware.parked and not firmware.tripped
            np.testing.assert_array_equal(firmware.taps, taps)
        held = store.progress(run_id)["steps_done"]
        store.request(run_id, "resume")
        _wait(lambda: store.progress(run_id)["steps_done"] > held, 60, "a step after the pause")
        store.request(run_id, "stop")
        worker.join(timeout=60)
        assert result["outcome"].status == "interrupted"
    finally:
        if worker.is_alive():
            store.request(started[0], "stop")
            worker.join(timeout=60)
        session.close()
        store.close()


def test_long_runs_are_thinned_on_the_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bokeh.document import Document

    import clln.watch
    from clln.compose import build_experiment, run_training
    from clln.protocol import load_protocol

    proto, text = load_protocol(PROTOCOLS / "demo.toml")
    exp = build_experiment(proto, source="demo", base_dir=PROTOCOLS, steps=101)
    with RunStore(tmp_path) as store:
        run_id = run_training(exp, store, protocol_text=text, protocol_path="demo").run_id
        hist = store.history(run_id)
    monkeypatch.setattr(clln.watch, "MAX_POINTS", 25)  # 101 steps -> every 4th, and the last
    doc = Document()
    clln.watch.run_document(doc, tmp_path, run_id)
    train = doc.get_model_by_name("train").data
    keep = (hist.steps % 4 == 0) | (hist.steps == hist.steps[-1])
    np.testing.assert_array_equal(train["step"], hist.steps[keep])
    np.testing.assert_array_equal(train["error"], hist.error[keep])
