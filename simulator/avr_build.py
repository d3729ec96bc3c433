"""Building the potentiometer-controller firmware and its simavr harness.

:func:`build` compiles ``drivers/firmware/potbank`` for an Arduino board with Debian's
AVR toolchain (``make``, ``avr-gcc``, ``avr-size``) and the simavr harness
``drivers/firmware/simavr/potbank_sim.c`` with the host C compiler;
:func:`missing_tools` names what is absent. :mod:`clln.simulator.avr` runs the result.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

FIRMWARE = Path(__file__).resolve().parents[1] / "drivers" / "firmware"
TOOLS = ("make", "avr-gcc", "avr-size", "cc")


class SimavrError(RuntimeError):
    """The firmware or the harness could not be built or run."""


def missing_tools() -> list[str]:
    """Tools (and libraries) that building and running the harness needs but are absent."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if not Path("/usr/include/simavr/sim_avr.h").exists():
        missing.append("libsimavr-dev (simavr headers)")
    if not Path("/usr/share/arduino/hardware/arduino/avr/cores/arduino").is_dir():
        missing.append("arduino-core-avr")
    return missing


@dataclass(frozen=True)
class Build:
    elf: Path
    harness: Path
    size: str  # avr-size summary line of the firmware


def _make(directory: Path, *args: str) -> str:
    proc = subprocess.run(["make", "-s", "-C", str(directory), *args], capture_output=True, text=True)
    if proc.returncode:
        raise SimavrError(f"make in {directory} failed:\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def build(out: str | Path, *, board: str = "mega2560", n_pots: int = 16, defines: str = "",
          insitu: bool = False) -> Build:
    """Compile the firmware (for ``board``, with extra ``-D`` ``defines``; with the in-situ
    mode of protocol 1.2 when ``insitu``) and the harness into ``out``; up-to-date files are
    not rebuilt."""
    out = Path(out)
    fw_dir = out / (f"{board}-{n_pots}{'-' + defines.replace(' ', '') if defines else ''}"
                    f"{'-insitu' if insitu else ''}")
    size = _make(FIRMWARE / "potbank", f"BOARD={board}", f"N_POTS={n_pots}", f"BUILD={fw_dir}",
                 f"EXTRA={defines}", f"INSITU={1 if insitu else ''}")
    _make(FIRMWARE / "simavr", f"BUILD={out}")
    return Build(fw_dir / "potbank.elf", out / "potbank_sim", size.strip().splitlines()[-1])


def default_build_dir() -> Path:
    """Where builds are cached between runs (``CLLN_AVR_BUILD`` or a per-user temp dir)."""
    env = os.environ.get("CLLN_AVR_BUILD")
    return Path(env) if env else Path("/tmp") / f"clln-avr-{os.getuid()}"

