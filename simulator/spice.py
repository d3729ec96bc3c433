"""ngspice netlists of nonlinear networks, and running ngspice in batch mode.

The field's reference simulator is SPICE: each sample's operating point solved by
ngspice. These helpers write a network's DC operating point as a netlist, run
``ngspice -b`` on it and read the node voltages back from its ASCII raw file. Used
as the independent reference in the tests and as the baseline in
``benchmarks/nonlinear_speed.py``.

* ``level1`` edges become level-1 NMOS devices (``M`` cards, GAMMA = 0, bulk at
  ground, no junction current), each gate driven by its own DC source;
* ``transistor`` edges become behavioural current sources (``B`` cards) whose
  expression is the channel function of :class:`~clln.simulator.devices.SeedTransistor`
  written out in ngspice's expression language;
* ``g_off`` and fixed conductances become resistors.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from clln.controller.errors import CllnError
from clln.controller.network import Network
from clln.simulator.devices import EdgeModel, Level1, SeedTransistor

#: ngspice options for a tight reference solution.
TIGHT = ".options reltol=1e-10 abstol=1e-18 vntol=1e-13 gmin=1e-18 itl1=500"


def _node(i: int, grounds: set[int]) -> str:
    return "0" if i in grounds else f"n{i}"


def _per_edge(value: np.ndarray | float, m: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(value, dtype=float), (m,))


def operating_point_netlist(network: Network, model: EdgeModel, gates: np.ndarray,
                            sources: np.ndarray, clamps: np.ndarray | None = None,
                            fixed_conductance: np.ndarray | None = None) -> str:
    """Netlist of one sample's DC operating point (sources (n_sources,), clamps
    (n_clamps,) volts or None). Ground nodes are SPICE's node 0."""
    roles = network.roles
    grounds = set(int(g) for g in roles.grounds)
    m = network.n_edges
    lines = ["* clln operating point", TIGHT]
    held = list(zip(roles.sources, sources))
    if clamps is not None:
        held += list(zip(roles.clamps, clamps))
    for k, (node, volts) in enumerate(held):
        lines.append(f"V{k} {_node(int(node), grounds)} 0 DC {float(volts)!r}")
    g_off = float(getattr(model, "g_off", 0.0))
    extra = np.zeros(m) if fixed_conductance is None else np.asarray(fixed_conductance, dtype=float)
    if isinstance(model, Level1):
        beta, v_to = _per_edge(model.beta, m), _per_edge(model.v_to, m)
    elif isinstance(model, SeedTransistor):
        s, v_t = _per_edge(model.s, m), _per_edge(model.v_t, m)
    else:
        raise CllnError(f"no SPICE netlist for edge model {model.name!r}")
    for j, (a, b) in enumerate(network.edges):
        na, nb = _node(int(a), grounds), _node(int(b), grounds)
        vg = float(gates[j])
        if isinstance(model, Level1):
            # W = L, so beta = KP; one model card per device (per-device spread)
            lines.append(f"VG{j} g{j} 0 DC {vg!r}")
            lines.append(f"M{j} {na} g{j} {nb} 0 mod{j} W=10u L=10u")
            lines.append(f".model mod{j} NMOS LEVEL=1 KP={float(beta[j])!r} VTO={float(v_to[j])!r} "
                         f"LAMBDA={model.lam!r} GAMMA=0 IS=0 JS=0 CBD=0 CBS=0")
        else:
            vstar = vg - float(v_t[j])
            forward = _channel(vstar, _voltage(nb), float(s[j]), model)
            reverse = _channel(vstar, _voltage(na), float(s[j]), model)
            lines.append(f"B{j} {na} {nb} I={forward} - {reverse}")
        g = g_off + float(extra[j])
        if g > 0:
            lines.append(f"R{j} {na} {nb} {1.0 / g!r}")
    lines += [".control", "set filetype=ascii", "op", "write {raw}", ".endc", ".end"]
    return "\n".join(lines) + "\n"


def _channel(vstar: float, terminal: str, s: float, model: SeedTransistor) -> str:
    """ngspice expression of F(V* - V_terminal) (A), see SeedTransistor.channel. A B-source
    current flows from its first node through the source to its second, so an edge a -> b
    is ``B a b I=F(V* - V_b) - F(V* - V_a)``."""
    x = f"({vstar!r}-{terminal})"
    knee = 0.5 * s * model.join**2
    return (f"({x}>{model.join!r} ? {0.5 * s!r}*{x}*{x} : "
            f"{knee!r}*exp({float(np.log(10.0)) / model.decade!r}*min({x}-{model.join!r},0)))")


def _voltage(node: str) -> str:
    return "0" if node == "0" else f"v({node})"


def ngspice_path() -> str | None:
    """The ngspice executable, or None when it is not installed."""
    return shutil.which("ngspice")


def run_operating_point(netlist: str, timeout: float = 600.0) -> dict[str, float]:
    """Run ``ngspice -b`` on an operating-point netlist; vector name -> volts."""
    return run_netlist(netlist, timeout)[0]


def read_ascii_raw(text: str) -> list[dict[str, float]]:
    """Points of an ngspice ASCII raw file: one dict (vector name -> value) per point."""
    lines = text.splitlines()
    names: list[str] = []
    points: list[dict[str, float]] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("No. Variables:"):
            count = int(line.split(":")[1])
        elif line.startswith("Variables:"):
            names = [lines[i + 1 + k].split()[1] for k in range(count)]
            i += count
        elif line.startswith("Values:"):
            values: list[float] = []
            for item in lines[i + 1:]:
                parts = item.split()
                if not parts:
                    continue
                values.append(float(parts[-1]))
                if len(values) == len(names):
                    points.append(dict(zip(names, values)))
                    values = []
            break
        i += 1
    return points


def node_voltages(result: dict[str, float], network: Network, sources: np.ndarray,
                  clamps: np.ndarray | None = None) -> np.ndarray:
    """(n,) node voltages from an operating point read back from ngspice."""
    v = np.zeros(network.n_nodes)
    for i in range(network.n_nodes):
        v[i] = result.get(f"v(n{i})", result.get(f"n{i}", 0.0))
    roles = network.roles
    v[list(roles.grounds)] = 0.0
    v[list(roles.sources)] = sources
    if clamps is not None:
        v[list(roles.clamps)] = clamps
    return v


def solve_with_ngspice(network: Network, model: EdgeModel, gates: np.ndarray,
                       sources: np.ndarray, clamps: np.ndarray | None = None,
                       fixed_conductance: np.ndarray | None = None) -> np.ndarray:
    """(n,) one sample's operating point by ngspice."""
    netlist = operating_point_netlist(network, model, gates, sources, clamps, fixed_conductance)
    return node_voltages(run_operating_point(netlist), network, sources, clamps)


def run_netlist(netlist: str, timeout: float = 600.0) -> list[dict[str, float]]:
    """Run a netlist whose control block writes ``{raw}``; its points."""
    exe = ngspice_path()
    if exe is None:
        raise CllnError("ngspice is not installed (Debian package 'ngspice')")
    with tempfile.TemporaryDirectory(prefix="clln-spice-") as tmp:
        raw = Path(tmp) / "out.raw"
        cir = Path(tmp) / "in.cir"
        cir.write_text(netlist.replace("{raw}", str(raw)))
        proc = subprocess.run([exe, "-b", str(cir)], capture_output=True, text=True,
                              timeout=timeout, check=False)
        if not raw.exists():
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
            raise CllnError(f"ngspice wrote no result: {' | '.join(tail)}")
        return read_ascii_raw(raw.read_text())
