"""HardwareBackend: a physical bench (DAQ + potentiometer bank) as a NetworkBackend.

Every boundary condition is checked against the bench's limits *before* anything is
written: |V| at every driven node, and the worst-case current through every edge
over its whole tap range. ``safe()`` drives every output to 0 V and opens the clamp
switches; it is idempotent.

The potentiometer controller's watchdog is kept fed by the driver's keep-alive thread,
and its status is read before every measurement batch: a parked or restarted controller
raises :class:`~clln.drivers.errors.FirmwareParked` (a hardware fault: the run pauses)
before anything is measured.

With a :class:`~clln.controller.calibration.Calibration` the backend's tap tables are
the calibrated ones (conductance targets become taps through them), AO commands are
corrected for the channels' gains and offsets, AI readings likewise, and ``describe()``
records the calibration's id. Calibration procedures get raw access through
``acquire_raw``, ``read_grounded``, ``write_taps`` (the controller's
``CalibrationTarget``), limits checked as for ``measure``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from clln.controller.backend import Applied, EdgeState, Measurement, SteppedEdges, boundary_arrays
from clln.controller.bounds import require_finite
from clln.controller.calibration import Calibration, ChannelCalibration
from clln.controller.errors import LimitError, UserError
from clln.controller.events import emit
from clln.controller.network import Network
from clln.drivers.daq import DaqInterface
from clln.drivers.errors import DaqError
from clln.drivers.potbank import PotBank


@runtime_checkable
class OpensTasks(Protocol):
    """A DAQ whose tasks are created and committed once per run (NI-DAQmx), not per
    acquisition."""

    def open(self) -> None:
        ...


@runtime_checkable
class SwitchesClamps(Protocol):
    """A DAQ that knows whether switches disconnect the clamp outputs in the free state.
    A DAQ that does not declare it is taken to have them."""

    @property
    def clamps_switched(self) -> bool:
        ...


@dataclass(frozen=True)
class Limits:
    """Hard limits of a bench.

    Attributes
    ----------
    max_node_voltage : V, max |V| at any driven node.
    max_edge_current : A, max current through any edge.
    terminal_window : (low, high) V every potentiometer terminal must stay within
        (the chip's VSS - 0.3 V ... VDD + 0.3 V); ``chip`` names it in messages.
    ao_max_current : A each AO channel can source (X-series: 5 mA).
    ao_edges : per AO channel (sources then clamps), the edges at the node it drives.
    ao_names : per AO channel, its name (``ao0``) for messages.
    """

    max_node_voltage: float
    max_edge_current: float
    terminal_window: tuple[float, float] = (-math.inf, math.inf)
    chip: str = "potentiometer"
    ao_max_current: float = math.inf
    ao_edges: tuple[tuple[int, ...], ...] = ()
    ao_names: tuple[str, ...] = ()

    def ao_loads(self, table: np.ndarray) -> np.ndarray:
        """(n_ao,) S: the sum of the highest conductances of the edges at each driven node."""
        gmax = table.max(axis=1)
        return np.array([float(gmax[list(edges)].sum()) for edges in self.ao_edges])


def check_limits(values: np.ndarray, table: np.ndarray, limits: Limits, *, where: str = "") -> None:
    """Raise LimitError if boundary voltages ``values`` (any shape, V; ground is 0 V)
    could exceed a limit.

    Node voltages of a resistor network lie between the extreme boundary voltages, so
    every potentiometer terminal lies within them (with 0 V), no edge can see more than
    their span, the worst edge current is that span times the edge's highest
    conductance over its tap range (``table`` (m, taps), S), and the worst current an
    AO channel sources is that span times the sum over its node's edges.
    """
    values = np.asarray(values, dtype=float)
    prefix = f"{where}: " if where else ""
    if values.size == 0:
        return
    if not np.all(np.isfinite(values)):
        raise LimitError(f"{prefix}a boundary voltage is not finite ({values[~np.isfinite(values)][0]!r}); "
                         f"nothing was sent")
    peak = float(np.abs(values).max())
    if peak > limits.max_node_voltage:
        raise LimitError(
            f"{prefix}a boundary voltage of {peak:.4g} V exceeds the limit max_node_voltage = "
            f"{limits.max_node_voltage:g} V; nothing was sent"
        )
    lo, hi = limits.terminal_window
    vmin, vmax = min(float(values.min()), 0.0), max(float(values.max()), 0.0)
    if vmin < lo or vmax > hi:
        bad = vmin if vmin < lo else vmax
        raise LimitError(
            f"{prefix}a boundary voltage of {bad:.4g} V is outside the {limits.chip}'s terminal "
            f"window {lo:g} ... {hi:g} V (set by pots.chip, pots.vss, pots.vdd); nothing was sent"
        )
    span = vmax - vmin
    gmax = table.max(axis=1)
    worst = int(np.argmax(gmax))
    current = span * float(gmax[worst])
    if current > limits.max_edge_current:
        raise LimitError(
            f"{prefix}boundary voltages spanning {span:.4g} V could drive {current * 1e3:.3g} mA "
            f"through edge {worst} ({1 / gmax[worst]:.0f} ohm at its lowest tap), above the limit "
            f"max_edge_current = {limits.max_edge_current * 1e3:g} mA; nothing was sent"
        )
    if limits.ao_edges:
        loads = limits.ao_loads(table)
        if values.ndim == 2 and values.shape[1] <= loads.size:
            # Columns are AO channels (sources, then clamps): channel i at V_i sources at
            # most its load times the largest difference to any other node's voltage.
            lo_row = np.minimum(values.min(axis=1, keepdims=True), 0.0)
            hi_row = np.maximum(values.max(axis=1, keepdims=True), 0.0)
            drop = np.maximum(values - lo_row, hi_row - values)
            currents = (drop * loads[: values.shape[1]]).max(axis=0)
        else:  # a set of voltages any channel may take
            currents = span * loads
        k = int(np.argmax(currents))
        if currents[k] > limits.ao_max_current:
            raise LimitError(
                f"{prefix}boundary voltages up to {vmax:.4g} V and down to {vmin:.4g} V could make AO "
                f"channel {limits.ao_names[k] if limits.ao_names else k} source {currents[k] * 1e3:.3g} mA "
                f"into its node's {len(limits.ao_edges[k])} edges at their lowest taps, above "
                f"daq.ao_max_current = {limits.ao_max_current * 1e3:g} mA; nothing was sent"
            )


class HardwareBackend:
    """A bench of potentiometer edges measured by a DAQ.

    Parameters
    ----------
    network : topology and node roles (sources and clamps in AO order).
    daq : the DAQ (NidaqmxDaq, or the emulated one).
    potbank : the potentiometer controller driver (not yet connected).
    edges : calibrated (or nominal) per-edge tap tables.
    chain : (m,) chain position (pot index) of every edge.
    ai_of_node : (n,) AI channel index that reads each node.
    limits : hard limits.
    initial_taps : taps written at connect; None keeps what the pots hold.
    info : bench description recorded with runs.
    calibration : calibrated tap tables and DAQ channel corrections (replaces ``edges``).
    """

    def __init__(
        self,
        network: Network,
        daq: DaqInterface,
        potbank: PotBank,
        edges: SteppedEdges,
        *,
        chain: np.ndarray,
        ai_of_node: np.ndarray,
        limits: Limits,
        initial_taps: np.ndarray | None = None,
        watchdog_ms: int = 2000,
        info: dict[str, Any] | None = None,
        calibration: Calibration | None = None,
    ) -> None:
        n_ao = len(network.roles.sources) + len(network.roles.clamps)
        self.calibration = calibration
        self.channels = ChannelCalibration.identity(network.n_nodes, n_ao)
        if calibration is not None:
            if calibration.table.shape != edges.table.shape:
                raise UserError(
                    f"calibration {calibration.id} has tables for {calibration.table.shape[0]} edges "
                    f"of {calibration.table.shape[1]} taps; this bench has {edges.table.shape[0]} "
                    f"edges of {edges.table.shape[1]} taps: re-run clln calibrate")
            if calibration.channels.ai_offset.shape != (network.n_nodes,) or \
                    calibration.channels.ao_offset.shape != (n_ao,):
                raise UserError(f"calibration {calibration.id} has channels for another bench: "
                                f"re-run clln calibrate")
            edges = calibration.edges
            self.channels = calibration.channels
        self._network = network
        self.daq = daq
        self.potbank = potbank
        self._edges = edges
        self.chain = np.asarray(chain, dtype=np.int64)
        self.ai_of_node = np.asarray(ai_of_node, dtype=np.int64)
        self.limits = limits
        self.initial_taps = None if initial_taps is None else np.asarray(initial_taps, dtype=np.int64)
        self.watchdog_ms = watchdog_ms
        self.info = dict(info or {})
        self._taps: np.ndarray | None = None
        self._bank = np.zeros(0, dtype=np.int64)
        self.is_safe = True
        self.daq_retries = 0

    # -- connection ----------------------------------------------------------

    def connect(self) -> None:
        """Handshake with the potentiometer controller, check it fits, open the DAQ's
        tasks, write the initial taps (verified)."""
        fw = self.potbank.connect()
        m = self._network.n_edges
        if fw.n_pots <= int(self.chain.max()) or fw.n_taps != self._edges.n_taps:
            raise UserError(
                f"potentiometer controller has {fw.n_pots} pots of {fw.n_taps} taps; the bench "
                f"file needs chain positions up to {int(self.chain.max())} ({m} edges) and "
                f"{self._edges.n_taps} taps"
            )
        self.info["firmware"] = {"name": fw.name, "version": list(fw.version), "n_pots": fw.n_pots}
        boot = self.potbank.boot
        if boot is not None:  # the open reset the board: why, and whether it kept the taps
            self.info["firmware"]["boot"] = {"reset_cause": boot.causes, "parked": boot.parked}
        if isinstance(self.daq, OpensTasks):  # the DAQ's tasks: created and committed once per run
            self.daq.open()
        self.potbank.set_watchdog(self.watchdog_ms)
        parked = self.potbank.status().parked  # also clears a watchdog trip from before
        self._bank = self.potbank.get_all()
        self._taps = self._bank[self.chain]
        if self.initial_taps is not None:
            self._write(self.initial_taps)
        elif parked:  # the park taps become the taps the host set, knowingly
            self._write(self._taps)
        self.potbank.start_keepalive(self.watchdog_ms / 4000)  # PING after a quarter watchdog idle

    def _write(self, taps: np.ndarray) -> None:
        """Write the edges' taps (the bank's other pots unchanged), verified by read-back."""
        bank = self._bank.copy()
        bank[self.chain] = taps
        self.potbank.set_all(bank)
        self._bank = bank
        self._taps = np.asarray(taps, dtype=np.int64).copy()

    # -- the seam ------------------------------------------------------------

    @property
    def network(self) -> Network:
        return self._network

    @property
    def edges(self) -> SteppedEdges:
        return self._edges

    def check(self, sources: np.ndarray, clamps: np.ndarray | None = None, *, where: str = "") -> None:
        """Raise LimitError if these boundary conditions could exceed a limit."""
        values = sources if clamps is None else np.hstack([sources, clamps])
        check_limits(values, self._edges.table, self.limits, where=where)

    def measure(self, sources: np.ndarray, clamps: np.ndarray | None = None) -> Measurement:
        roles = self._network.roles
        sources, clamps = boundary_arrays(self._network, sources, clamps)
        self.check(sources, clamps)
        ao = np.hstack([sources, np.zeros((sources.shape[0], len(roles.clamps))) if clamps is None
                        else clamps])
        ao = self.channels.commands(ao)  # what the AO channels must be told to put that out
        # Free state: open switches disconnect the clamp outputs; without switches they
        # hold their nodes (at 0 V) and count.
        switched = not isinstance(self.daq, SwitchesClamps) or self.daq.clamps_switched
        connected = ao if clamps is not None or not switched else ao[:, :len(roles.sources)]
        check_limits(connected, self._edges.table, self.limits)
        self.potbank.check_running()  # never measure a parked or restarted bank
        self.is_safe = False
        try:
            readings, stamps = self.daq.acquire(ao, clamps_engaged=clamps is not None)
        except DaqError as exc:  # one retry for a transient DAQ error; a second one stops the run
            self.daq_retries += 1
            emit("daq", f"acquisition retried after: {exc}")
            readings, stamps = self.daq.acquire(ao, clamps_engaged=clamps is not None)
        return Measurement(self.channels.volts(readings[:, self.ai_of_node]), None, stamps)

    # -- raw access for calibration (clln.controller.calibration.CalibrationTarget) ------

    def drive_window(self) -> tuple[float, float]:
        """(center, amplitude) V: the widest AO range center +- amplitude such that any
        pattern within it passes the limits: every value within +-max_node_voltage and
        the terminal window, and the span of the values and 0 V within what
        max_edge_current and ao_max_current allow through the tap tables' highest
        conductances. A window that is symmetric about 0 V gives center 0."""
        table = self._edges.table
        limits = self.limits
        low = max(-limits.max_node_voltage, limits.terminal_window[0])
        high = min(limits.max_node_voltage, limits.terminal_window[1])
        span = limits.max_edge_current / float(table.max())
        if limits.ao_edges:
            span = min(span, limits.ao_max_current / float(limits.ao_loads(table).max()))
        width = min(span, high - low)
        amplitude = 0.5 * width
        start = min(max(low, -amplitude), high - width)
        return start + amplitude, amplitude

    def drive_limit(self) -> float:
        """The amplitude (V) of :meth:`drive_window`."""
        return self.drive_window()[1]

    def drive_center(self) -> float:
        """The center (V) of :meth:`drive_window`."""
        return self.drive_window()[0]

    def acquire_raw(self, ao: np.ndarray, *, clamps_engaged: bool) -> tuple[np.ndarray, np.ndarray]:
        """AO commands (B, n_ao) as given (no channel correction); raw readings (B, n) in
        node order and timestamps (B,). Limits are checked first."""
        ao = np.atleast_2d(np.asarray(ao, dtype=float))
        n_ao = len(self._network.roles.sources) + len(self._network.roles.clamps)
        if ao.shape[1] != n_ao:
            raise ValueError(f"ao must be (B, {n_ao}), got {ao.shape}")
        check_limits(ao, self._edges.table, self.limits, where="calibration")
        self.potbank.check_running()
        self.is_safe = False
        readings, stamps = self.daq.acquire(ao, clamps_engaged=clamps_engaged)
        return np.asarray(readings)[:, self.ai_of_node], stamps

    def read_grounded(self, repeats: int) -> np.ndarray:
        """(repeats, n) raw readings of every node's AI channel with its input grounded."""
        return np.asarray(self.daq.read_grounded(repeats))[:, self.ai_of_node]

    def write_taps(self, taps: np.ndarray) -> None:
        """Every edge's tap at once (one SET_ALL), verified by read-back."""
        taps = np.asarray(taps)
        if self._taps is None:
            raise RuntimeError("call connect() first")
        if taps.shape != self._taps.shape or not np.issubdtype(taps.dtype, np.integer):
            raise ValueError(f"taps must be {self._taps.shape} integers")
        if taps.min() < 0 or taps.max() >= self._edges.n_taps:
            raise ValueError(f"taps must lie in 0..{self._edges.n_taps - 1}")
        self._write(taps)

    def read_taps(self) -> np.ndarray:
        if self._taps is None:
            raise RuntimeError("call connect() first")
        return self._taps.copy()

    def adjust(self, commands: np.ndarray) -> Applied:
        commands = require_finite(commands, "adjust: tap commands")
        if self._taps is None:
            raise RuntimeError("call connect() first")
        if commands.shape != self._taps.shape:
            raise ValueError(f"commands must have shape {self._taps.shape}, got {commands.shape}")
        span = self._edges.n_taps  # no move is longer: huge commands cannot overflow int64
        wanted = self._taps + np.clip(commands, -span, span).astype(np.int64)
        taps = np.clip(wanted, 0, self._edges.n_taps - 1)
        applied = taps - self._taps
        if np.any(applied):
            self._write(taps)
        return Applied(applied, taps != wanted)

    def state_dict(self) -> dict[str, Any]:
        """The taps (the bench's only state the controller owns)."""
        if self._taps is None:
            raise RuntimeError("call connect() first")
        return {"taps": self._taps.copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Write the checkpointed taps back to the pots (verified by read-back)."""
        if self._taps is None:
            raise RuntimeError("call connect() first")
        self._write(np.asarray(state["taps"], dtype=np.int64))

    def read_edges(self) -> EdgeState:
        """The taps last written and verified by read-back, and their calibrated conductances."""
        if self._taps is None:
            raise RuntimeError("call connect() first")
        return EdgeState(self._edges.conductance(self._taps), self._taps.copy())

    def safe(self) -> None:
        self.daq.zero()
        self.is_safe = True

    def keepalive(self) -> None:
        """Tell the potentiometer controller the host is still there (``PING``), so that
        its watchdog does not park the pots while a run is held at a pause."""
        self.potbank.ping()

    def close(self) -> None:
        """Outputs to 0 V and the DAQ's tasks cleared, then the controller's port closed."""
        try:
            self.daq.close()
            self.is_safe = True
        finally:
            self.potbank.close()

    def __enter__(self) -> HardwareBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> dict[str, Any]:
        calibration = None if self.calibration is None else {
            **self.calibration.describe(), **self.info.get("calibration", {})}
        return {"backend": "bench", "preset": self.info.get("preset", "bench"), **self.info,
                "calibration": calibration,
                "limits": {"max_node_voltage": self.limits.max_node_voltage,
                           "max_edge_current": self.limits.max_edge_current},
                "edges": {"kind": "stepped", "n_taps": self._edges.n_taps}}
