"""The DAQ set-up of example-16 and what it buys, on the emulated bench's model.

Prints the set-up ``drivers.daq.plan_daq`` derives from the bench file (ranges,
averaging window, convert rate) and, measured in the same run on the model with noise
and quantization off:

* mains pickup (10 mV peak at every AI input) left in the readings by the planned
  window of whole mains periods, and by the old 16 samples at 10 kS/s;
* multiplexer ghosting with every edge at its highest resistance, at the planned
  convert interval and at the 1 us the ADC allows, against one LSB of the range.

Usage: python benchmarks/daq_setup.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clln.benchfile import daq_config, node_resistance_max, parse_bench
from clln.benchrun import bench_network, daq_parameters, nominal_edges
from clln.simulator import make_imperfections
from clln.simulator.bench import BenchModel

BENCH = Path(__file__).resolve().parents[1] / "protocols" / "benches" / "example-16.toml"
PICKUP = 10e-3  # V peak


def readings(text: str, sources: np.ndarray, **overrides: object) -> np.ndarray:
    bench = parse_bench(text, "example-16")
    p = bench.pots
    model = BenchModel(bench_network(bench), nominal_edges(bench), np.full(len(bench.edges), p.taps - 1),
                       imperfections=make_imperfections("ideal", {**daq_parameters(bench), **overrides}),
                       pot=(p.taps, p.r_ab, p.wiper, p.r_series), preset="ideal")
    return model.measure(sources).voltages


def main() -> None:
    text = BENCH.read_text()
    bench = parse_bench(text, "example-16")
    cfg = daq_config(bench)
    r_max = node_resistance_max(bench)
    print(f"example-16: AI +-{cfg.ai_range:g} V, AO +-{cfg.ao_range:g} V; {cfg.sample_rate:g} S/s per channel, "
          f"{cfg.settle_samples} settle + {cfg.average_samples} averaged samples "
          f"({cfg.average_samples / cfg.sample_rate * 1e3:g} ms); convert interval "
          f"{1e6 / cfg.convert_rate:.3g} us ({cfg.convert_rate / 1e3:.4g} kS/s) for nodes up to "
          f"{r_max / 1e3:.3g} kOhm")
    sources = np.random.default_rng(3).uniform(0.0, 1.0, (24, 2))
    old = {"averaging": 16, "ai_sample_rate": 10_000.0, "settle_time": 36 / 10_000.0}
    print("\nmains pickup 10 mV peak, max residual in the readings:")
    for mains in (50, 60):
        variant = text.replace("mains_frequency = 50", f"mains_frequency = {mains}")
        window = daq_config(parse_bench(variant, "example-16"))
        quiet = {"ai_capacitance": 0.0, "mains_frequency": float(mains)}
        new = np.abs(readings(variant, sources, **quiet, mains_pickup=PICKUP)
                     - readings(variant, sources, **quiet)).max()
        before = np.abs(readings(variant, sources, **quiet, **old, mains_pickup=PICKUP)
                        - readings(variant, sources, **quiet, **old)).max()
        print(f"  {mains} Hz: planned window ({window.average_samples} samples) {new:.2g} V "
              f"({new / PICKUP:.1e} of the pickup); old 16 samples {before * 1e3:.3g} mV "
              f"({before / PICKUP:.0%})")
    truth = readings(text, sources, ai_capacitance=0.0)
    lsb = 2 * cfg.ai_range / 2**16
    planned = np.abs(readings(text, sources) - truth).max()
    fast = np.abs(readings(text, sources, mux_settle_time=1e-6) - truth).max()
    print(f"\nghosting (100 pF), max error: planned interval {planned * 1e6:.3g} uV ({planned / lsb:.2g} LSB); "
          f"1 us {fast * 1e3:.3g} mV ({fast / lsb:.0f} LSB); 1 LSB = {lsb * 1e6:.3g} uV")


if __name__ == "__main__":
    main()
