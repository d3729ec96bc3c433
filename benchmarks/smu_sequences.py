"""The SMU command sequences against the manual-faithful SMUs, old against new.

For each target (pyvisa-sim with ``drivers/instruments/bench-sim.yaml``; the emulated SMU
on ``protocols/benches/example-16.toml``'s model) and each model (Keithley 2400, 2450)
it takes one 4-wire reading at 50 uA / 1 V with

* the driver before the 2400/2450 rework (``git show 90cad2e:drivers/visa.py``, loaded
  from the repository's history; skipped when git or that commit is not available), and
* the current driver (``clln.drivers.visa``),

and prints the reading and its relative error against the truth (the YAML's fixture
resistor, or the bench model's two-point resistance), or how the sequence failed; then
what was left in the error queue, and for the emulator the current and voltage limit
actually sourced and whether the idle SMU still loads the network.

Usage: python benchmarks/smu_sequences.py
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from clln.benchfile import load_bench
from clln.benchrun import bench_model
from clln.drivers.visa import make_smu, open_instrument
from clln.simulator.smu import EmulatedSmu

ROOT = Path(__file__).resolve().parents[1]
OLD_COMMIT = "90cad2e"
ADDRESS = {"2400": "GPIB0::24::INSTR", "2450": "USB0::0x05E6::0x2450::04096331::INSTR"}


def old_driver(work: Path) -> Any:
    """The old drivers/visa.py as a module, or None."""
    try:
        text = subprocess.run(["git", "show", f"{OLD_COMMIT}:drivers/visa.py"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = work / "old_visa.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("old_visa", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    bench, _ = load_bench(ROOT / "protocols" / "benches" / "example-16.toml")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        old = old_driver(work)
        drivers = [("new", lambda model, res: make_smu(model, res))]
        if old is None:
            print(f"(old driver not available: no git history with {OLD_COMMIT})")
        else:
            drivers.insert(0, (f"old {OLD_COMMIT}", lambda model, res: old.Smu(res)))
        print("target      model  driver        outcome")
        for target in ("pyvisa-sim", "emulator"):
            for model in ("2400", "2450"):
                for name, make in drivers:
                    if target == "pyvisa-sim":  # a fresh copy: pyvisa-sim keeps state per path
                        yaml = work / f"{model}-{name.split()[0]}.yaml"
                        shutil.copy(ROOT / "drivers" / "instruments" / "bench-sim.yaml", yaml)
                        res: Any = open_instrument(ADDRESS[model], f"{yaml}@sim")
                        truth = 11075.0
                    else:
                        bm = bench_model(bench, np.full(len(bench.edges), 40))
                        res = EmulatedSmu(bm, (4, 7), sync=lambda: None, instrument=model, seed=1)
                        truth = bm.two_point_resistance(4, 7)
                    try:
                        ohms = make(model, res).measure_resistance(5e-5, compliance_v=1.0)
                        outcome = f"{ohms:.2f} ohm, rel. error {ohms / truth - 1:+.1e}"
                    except Exception as exc:  # the point: show how the sequence fails
                        outcome = f"FAILS ({type(exc).__name__}: {exc})"
                    left = make_smu(model, res).errors()
                    outcome += f"; errors queued: {len(left)}" + (f" ({left[0]})" if left else "")
                    if target == "emulator":
                        outcome += (f"; sourced (A, V limit) {res.sourced}; idle SMU loads the "
                                    f"network: {res.loads_network}")
                    print(f"{target:11s} {model:6s} {name:13s} {outcome}", flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
