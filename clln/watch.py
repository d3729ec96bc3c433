"""``clln watch``: a live dashboard of runs in the run store, served by a Bokeh server.

The page follows a run while another process writes it (SQLite in WAL mode lets readers
in while the trainer writes): train and test error against step, the network with each
edge coloured by its latest recorded conductance, the nudge and update size, the bench's
status and the run's event log. The pause, resume and stop buttons leave a request in the
store; the trainer obeys it at its next step boundary, wherever it runs.
``/runs`` lists every run (or one sweep's runs) with its progress, and for a sweep the
final test error of each finished run as the sweep fills.

All JavaScript comes from the installed ``bokeh`` package: the page needs no network.
Bound to 127.0.0.1 by default; bound to any other address, every page needs the token
printed at start-up (``?token=...``; a cookie keeps it for the session).
"""

from __future__ import annotations

import hmac
import math
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from clln.controller.errors import CllnError
from clln.controller.store import RunStore

#: Seconds between two looks at the store.
POLL_S = 0.5
#: At most about this many training steps are drawn per run (longer runs are thinned to
#: every k-th step, the latest step always included); the store keeps every step.
MAX_POINTS = 50_000
#: Event kinds that make up the bench status panel.
BENCH_KINDS = ("retry", "watchdog", "daq", "fault", "pause", "warning")
_ROLE_COLOURS = {"source": "#d62728", "ground": "#222222", "clamp": "#1f77b4", "output": "#1f77b4",
                 "internal": "#bbbbbb"}


# -- what the page shows, read from the store (no Bokeh here) -----------------------


@dataclass
class RunFeed:
    """Incremental reader of one run: each :meth:`poll` returns what is new since the last."""

    store: RunStore
    run_id: str
    step: int = 0
    test_step: int = -1
    snapshot_step: int = -1
    event_id: int = 0
    kinds: Counter = field(default_factory=Counter)

    def poll(self) -> dict[str, Any]:
        steps, tests = self.store.records_since(self.run_id, self.step, self.test_step)
        if steps:
            self.step = int(steps[-1][0])
        if tests:
            self.test_step = int(tests[-1][0])
        snap = self.store.latest_snapshot(self.run_id)
        if snap is not None and snap[0] != self.snapshot_step:
            self.snapshot_step = snap[0]
        else:
            snap = None
        events = self.store.events(self.run_id, after=self.event_id)
        if events:
            self.event_id = events[-1]["id"]
            self.kinds.update(e["kind"] for e in events)
        return {"progress": self.store.progress(self.run_id), "steps": steps, "tests": tests,
                "snapshot": snap, "events": events, "pending": self.store.pending(self.run_id)}


def layout_positions(info: dict[str, Any]) -> np.ndarray:
    """(n_nodes, 2) node positions: the recorded ones, or a circle when the network has none."""
    if info.get("positions") is not None:
        return np.asarray(info["positions"], dtype=float)[:, :2]
    n = int(info["n_nodes"])
    angle = 2 * np.pi * np.arange(n) / n
    return np.column_stack([np.cos(angle), np.sin(angle)])


def node_roles(info: dict[str, Any]) -> list[str]:
    """Each node's role: source, ground, clamp (output), or internal."""
    roles = ["internal"] * int(info["n_nodes"])
    for key, role in (("clamps", "clamp"), ("grounds", "ground"), ("sources", "source")):
        for k in info.get(key, []):
            roles[int(k)] = role
    return roles


def bench_status(backend: dict[str, Any], kinds: Counter, pending: str | None,
                 paused: bool) -> str:
    """The bench status panel (HTML): backend, counts of retries, watchdog trips, DAQ
    events, faults and pauses from the event log, and any request not yet obeyed."""
    name = backend.get("backend", "?")
    rows = [f"<b>backend</b> {name}"]
    if backend.get("preset"):
        rows.append(f"<b>preset</b> {backend['preset']}")
    labels = {"retry": "serial retries", "watchdog": "watchdog trips", "daq": "DAQ events",
              "fault": "faults", "pause": "pauses", "warning": "warnings"}
    rows.extend(f"<b>{labels[k]}</b> {kinds.get(k, 0)}" for k in BENCH_KINDS)
    if paused:
        rows.append("<b style='color:#b36b00'>paused</b> (outputs at 0 V)")
    if pending:
        rows.append(f"<b>request</b> {pending} (waiting for the next step boundary)")
    return "<br>".join(rows)


def _html(text: str) -> str:
    """Text safe inside the page's HTML."""
    import html

    return html.escape(str(text))


# -- the Bokeh documents ------------------------------------------------------------


def _argument(doc: Any, name: str) -> str | None:
    args = doc.session_context.request.arguments if doc.session_context else {}
    values = args.get(name)
    return values[0].decode() if values else None


def run_document(doc: Any, root: Path, default_run: str) -> None:
    """The page of one run (``/run?id=RUN``; ``latest`` follows the newest run)."""
    from bokeh.layouts import column, row
    from bokeh.models import ColumnDataSource, LogColorMapper
    from bokeh.models.annotations import ColorBar, LabelSet, Legend, LegendItem, Title
    from bokeh.models.widgets import Button, DataTable, Div, TableColumn
    from bokeh.palettes import Viridis256
    from bokeh.plotting import figure

    store = RunStore(root)
    try:
        run_id = store.resolve(_argument(doc, "id") or default_run)
    except CllnError as exc:  # an unknown run or an empty store: say so on the page
        store.close()
        doc.add_root(Div(text=f"<b>clln watch</b>: {_html(str(exc))}", name="header"))
        return
    rec = store.run(run_id)
    info = rec["info"]
    feed = RunFeed(store, run_id)

    header = Div(name="header", text="", styles={"font-size": "15px"})
    train = ColumnDataSource({"step": [], "error": [], "nudge": [], "update_norm": []}, name="train")
    test = ColumnDataSource({"step": [], "error": [], "accuracy": []}, name="test")
    events = ColumnDataSource({"time": [], "step": [], "kind": [], "message": []}, name="events")

    err = figure(title="train and test error", x_axis_type="log", y_axis_type="log",
                 width=520, height=320, x_axis_label="step", y_axis_label="cost (task units)")
    err.line("step", "error", source=train, color="#999999", legend_label="train (batch)")
    err.line("step", "error", source=test, color="#d62728", line_width=2, legend_label="test")
    err.scatter("step", "error", source=test, color="#d62728", size=4)
    err.legend.location = "bottom_left"

    size = figure(title="nudge and update size", x_axis_type="log", y_axis_type="log",
                  width=520, height=260, x_axis_label="step", x_range=err.x_range)
    size.line("step", "nudge", source=train, color="#1f77b4", legend_label="nudge rms (V)")
    size.line("step", "update_norm", source=train, color="#ff7f0e",
              legend_label="update norm (S or taps)")
    size.legend.location = "bottom_left"

    pos = layout_positions(info)
    ends = np.asarray(info["edges"], dtype=int).reshape(-1, 2)
    g0 = np.asarray(rec["initial_state"], dtype=float)
    edges = ColumnDataSource({"x0": pos[ends[:, 0], 0], "y0": pos[ends[:, 0], 1],
                              "x1": pos[ends[:, 1], 0], "y1": pos[ends[:, 1], 1],
                              "g": g0, "edge": np.arange(len(ends))}, name="edges")
    positive = g0[g0 > 0]
    lo, hi = (float(positive.min()), float(positive.max())) if positive.size else (1e-6, 1e-2)
    mapper = LogColorMapper(palette=Viridis256, low=lo, high=hi if hi > lo else lo * 10)
    net = figure(title="network: edge conductance (S), step 0", width=560, height=560,
                 match_aspect=True, tools="pan,wheel_zoom,reset,save", name="network")
    net.segment("x0", "y0", "x1", "y1", source=edges, line_width=4,
                color={"field": "g", "transform": mapper})
    roles = node_roles(info)
    nodes = ColumnDataSource({"x": pos[:, 0], "y": pos[:, 1], "label": [str(k) for k in range(len(pos))],
                              "role": roles, "colour": [_ROLE_COLOURS[r] for r in roles]})
    items = []
    for role in ("source", "ground", "clamp", "internal"):
        idx = [k for k, r in enumerate(roles) if r == role]
        if not idx:
            continue
        view = ColumnDataSource({"x": pos[idx, 0], "y": pos[idx, 1]})
        glyph = net.scatter("x", "y", source=view, size=9 if role == "internal" else 13,
                            color=_ROLE_COLOURS[role], line_color="white")
        label = {"clamp": "output (clamped)"}.get(role, role)
        # bokeh types a renderer list as GlyphRenderer[Glyph], invariant in the glyph
        items.append(LegendItem(label=label, renderers=[glyph]))  # type: ignore[list-item]
    net.add_layout(LabelSet(x="x", y="y", text="label", source=nodes, x_offset=6, y_offset=4,
                            text_font_size="9px", text_color="#333333"))
    net.add_layout(Legend(items=items, location="top_left"), "below")
    net.add_layout(ColorBar(color_mapper=mapper, title="G (S)"), "right")
    net.axis.visible = False
    net.grid.visible = False

    status = Div(name="bench", text="", width=260)
    control = Div(name="control", text="")
    buttons = []
    actions: tuple[tuple[str, Literal["warning", "success", "danger"]], ...] = (
        ("pause", "warning"), ("resume", "success"), ("stop", "danger"))
    for action, kind in actions:
        button = Button(label=action, button_type=kind, width=80, name=f"button-{action}")

        def click(action: str = action) -> None:
            store.request(run_id, action)
            control.text = f"{action} requested at {time.strftime('%H:%M:%S')}"

        button.on_click(click)
        buttons.append(button)
    table = DataTable(source=events, name="event-log", width=900, height=180, columns=[
        TableColumn(field="time", title="time (UTC)", width=150),
        TableColumn(field="step", title="step", width=60),
        TableColumn(field="kind", title="kind", width=90),
        TableColumn(field="message", title="message", width=600)])

    state = {"paused": False}
    stride = max(1, int(rec["steps_planned"]) // MAX_POINTS)

    def update() -> None:
        new = feed.poll()
        if new["steps"]:
            st = np.asarray(new["steps"], dtype=float)
            keep = (st[:, 0] % stride == 0)
            keep[-1] = True
            st = st[keep]
            train.stream({"step": st[:, 0], "error": st[:, 1], "nudge": st[:, 2],
                          "update_norm": st[:, 3]})
        if new["tests"]:
            shown = [t for t in new["tests"] if t[0] > 0]  # step 0 has no place on a log axis
            if shown:
                te = np.asarray(shown, dtype=float)
                test.stream({"step": te[:, 0], "error": te[:, 1], "accuracy": te[:, 2]})
            if new["tests"][0][0] == 0:
                state["initial"] = new["tests"][0][1]
        if new["snapshot"] is not None:
            step, g = new["snapshot"]
            g = np.asarray(g, dtype=float)
            positive = g[g > 0]
            if positive.size and positive.max() > positive.min():
                mapper.update(low=float(positive.min()), high=float(positive.max()))
            edges.data = {**edges.data, "g": g}
            if isinstance(net.title, Title):  # a figure's title is a Title model
                net.title.text = f"network: edge conductance (S), step {step}"
        if new["events"]:
            for e in new["events"]:
                if e["kind"] in ("pause", "resume"):
                    state["paused"] = e["kind"] == "pause"
            events.stream({
                "time": [time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e["t"])) for e in new["events"]],
                "step": [e["step"] for e in new["events"]],
                "kind": [e["kind"] for e in new["events"]],
                "message": [e["message"] for e in new["events"]]})
        p = new["progress"]
        running = p["status"] == "running"
        if not running:
            state["paused"] = False
        initial = state.get("initial")
        last_test = test.data["error"][-1] if len(test.data["error"]) else None
        last_train = train.data["error"][-1] if len(train.data["error"]) else None

        def fmt(x: float | None) -> str:
            return "-" if x is None or not math.isfinite(x) else f"{x:.4g}"

        label = "paused" if state["paused"] and running else p["status"]
        header.text = (
            f"<b>run {_html(run_id)}</b> ({_html(rec['name'] or '')}) — <b>{label}</b> — "
            f"step <span id='steps-done'>{p['steps_done']}</span>/{p['steps_planned']} — "
            f"train {fmt(last_train)}, test {fmt(initial)} → {fmt(last_test)}"
            + (f" — {_html(p['message'])}" if p["message"] else ""))
        status.text = bench_status(rec["backend"], feed.kinds, new["pending"],
                                   state["paused"] and running)
        for button in buttons:
            button.disabled = not running

    update()
    callback = doc.add_periodic_callback(update, int(POLL_S * 1000))

    def closed(_: Any) -> None:
        doc.remove_periodic_callback(callback)
        store.close()

    doc.on_session_destroyed(closed)
    doc.title = f"clln watch {run_id}"
    doc.add_root(column(header, row(*buttons, control), row(column(err, size), net, status), table))


def runs_document(doc: Any, root: Path, default_sweep: str | None) -> None:
    """The list of runs with their progress (``/runs``; ``?sweep=NAME`` for one sweep, with
    its summary plot filling as runs finish)."""
    from bokeh.layouts import column
    from bokeh.models import ColumnDataSource
    from bokeh.models.widgets import DataTable, Div, HTMLTemplateFormatter, TableColumn
    from bokeh.plotting import figure

    store = RunStore(root)
    sweep = _argument(doc, "sweep") or default_sweep
    header = Div(name="header", text="")
    rows = ColumnDataSource({k: [] for k in ("id", "name", "status", "progress", "final_test_error",
                                             "backend", "sweep", "seed", "x")}, name="runs")
    link = HTMLTemplateFormatter(template='<a href="run?id=<%= value %>"><%= value %></a>')
    table = DataTable(source=rows, width=1000, height=400, columns=[
        TableColumn(field="id", title="run", formatter=link, width=200),
        TableColumn(field="name", title="name"), TableColumn(field="status", title="status"),
        TableColumn(field="progress", title="steps"),
        TableColumn(field="final_test_error", title="last test error"),
        TableColumn(field="backend", title="backend"), TableColumn(field="sweep", title="sweep")])
    summary = figure(title=f"sweep {sweep}: last test error of each run" if sweep else "",
                     y_axis_type="log", width=600, height=320, x_axis_label="parameter or seed",
                     y_axis_label="test error", visible=sweep is not None)
    summary.scatter("x", "final_test_error", source=rows, size=8)

    def update() -> None:
        data: dict[str, list[Any]] = {k: [] for k in rows.data}
        for r in store.index():
            sw = r["info"].get("sweep") or {}
            if sweep is not None and sw.get("name") != sweep:
                continue
            params = sw.get("parameters") or {}
            x = next((v for v in params.values() if isinstance(v, (int, float))), sw.get("seed", 0))
            data["id"].append(r["id"])
            data["name"].append(r["name"] or "")
            data["status"].append(r["status"])
            data["progress"].append(f"{r['steps_done']}/{r['steps_planned']}")
            last = r["final_test_error"]
            data["final_test_error"].append(float("nan") if last is None else float(last))
            data["backend"].append(r["backend"].get("backend", ""))
            data["sweep"].append(sw.get("name", ""))
            data["seed"].append(sw.get("seed"))
            data["x"].append(float(x) if x is not None else 0.0)
        rows.data = data
        done = sum(1 for s in data["status"] if s == "completed")
        header.text = (f"<b>{'sweep ' + _html(sweep) if sweep else 'runs'}</b>: "
                       f"{len(data['id'])} runs, {done} completed")

    update()
    callback = doc.add_periodic_callback(update, int(POLL_S * 4000))

    def closed(_: Any) -> None:
        doc.remove_periodic_callback(callback)
        store.close()

    doc.on_session_destroyed(closed)
    doc.title = "clln runs"
    doc.add_root(column(header, table, summary))


# -- the server ---------------------------------------------------------------------


def token_auth(token: str) -> Any:
    """A Bokeh auth provider: a request passes with ``?token=TOKEN`` or the cookie set then."""
    from bokeh.server.auth_provider import AuthProvider
    from tornado.web import RequestHandler

    cookie = "clln_watch_token"

    def get_user(handler: RequestHandler) -> str | None:
        given = handler.get_argument("token", default=None) or handler.get_cookie(cookie)
        if given is None or not hmac.compare_digest(given.encode(), token.encode()):
            return None
        if handler.get_cookie(cookie) != given and hasattr(handler, "set_cookie"):
            handler.set_cookie(cookie, given, httponly=True, samesite="Strict")
        return "watcher"

    class Denied(RequestHandler):
        def get(self) -> None:
            self.set_status(403)
            self.finish("clln watch: this page needs the token printed by 'clln watch' "
                        "(add ?token=... to the address)")

    class TokenAuth(AuthProvider):
        @property
        def get_user(self) -> Any:
            return get_user

        @property
        def login_url(self) -> str:
            return "/denied"

        @property
        def login_handler(self) -> Any:
            return Denied

    return TokenAuth()


LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def make_server(root: Path, run: str, *, host: str = "127.0.0.1", port: int = 5006,
                token: str | None = None, sweep: str | None = None) -> tuple[Any, str]:
    """A Bokeh server with the run page (``/run``) and the runs page (``/runs``) on the run
    store at ``root``. Returns (server, address of the first page to open). Off the local
    host a token is required (generated when not given)."""
    from bokeh.application import Application
    from bokeh.application.handlers.function import FunctionHandler
    from bokeh.server.server import Server

    local = host in LOCAL_HOSTS
    if not local and token is None:
        token = secrets.token_urlsafe(16)
    apps = {"/run": Application(FunctionHandler(lambda doc: run_document(doc, root, run))),
            "/runs": Application(FunctionHandler(lambda doc: runs_document(doc, root, sweep)))}
    kwargs: dict[str, Any] = {}
    if token is not None:
        kwargs["auth_provider"] = token_auth(token)
    origins = [f"{h}:{port}" for h in ("127.0.0.1", "localhost")] if local else ["*"]
    if not local:  # any origin may connect, but only with the token: Bokeh's warning is moot
        import logging

        logging.getLogger("bokeh.server.util").setLevel(logging.ERROR)
    server = Server(apps, port=port, address=host, allow_websocket_origin=origins, num_procs=1,
                    **kwargs)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    page = f"runs?sweep={sweep}" if sweep else f"run?id={run}"
    url = f"http://{shown}:{server.port}/{page}"
    if token is not None:
        url += ("&" if "?" in url else "?") + f"token={token}"
    return server, url
