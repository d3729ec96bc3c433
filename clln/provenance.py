"""What a lab notebook records with every run: who ran it on what (``[meta]`` and the
``--operator/--sample/--note/--tag`` options), and what it ran on, found automatically:
host, user, Python and package versions, firmware, bench file hash, calibration, and the
git commit of the protocol's folder."""

from __future__ import annotations

import getpass
import hashlib
import platform
import socket
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

#: Packages whose versions every run records (None when not installed).
PACKAGES = ("clln", "numpy", "scipy", "pydantic", "h5py", "xarray", "pyserial", "nidaqmx",
            "pyvisa", "pyvisa-sim", "qdldl", "scikit-sparse", "dask", "bokeh")


def package_versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def git_state(folder: Path) -> dict[str, Any] | None:
    """Commit and dirtiness of the git work tree holding ``folder`` (None outside git or
    without git)."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True,
                                  timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    status = git("status", "--porcelain", "--", ".")
    return {"commit": commit, "dirty": bool(status), "folder": str(folder.resolve())}


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def collect(protocol_path: Path | None, *, bench_text: str | None = None,
            backend: dict[str, Any] | None = None, firmware: Any = None) -> dict[str, Any]:
    """The automatic part of a run's provenance (JSON-ready).

    Parameters
    ----------
    protocol_path : the protocol file (its folder's git commit is recorded).
    bench_text : the bench file's text (its SHA-256 is recorded).
    backend : the backend's description (its calibration id is recorded).
    firmware : the potentiometer bank's ``FirmwareInfo`` when a bench is used.
    """
    prov: dict[str, Any] = {
        "host": socket.gethostname(),
        "user": getpass.getuser(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "packages": package_versions(),
        "git": None if protocol_path is None else git_state(protocol_path.resolve().parent),
    }
    if bench_text is not None:
        prov["bench_sha256"] = sha256(bench_text)
    calibration = (backend or {}).get("calibration")
    if isinstance(calibration, dict) and calibration.get("id"):
        prov["calibration_id"] = calibration["id"]
    if firmware is not None:
        prov["firmware"] = {"name": firmware.name, "version": ".".join(map(str, firmware.version)),
                            "pots": firmware.n_pots, "taps": firmware.n_taps,
                            "watchdog_ms": firmware.watchdog_ms}
    return prov


def lab_meta(spec: Any, *, operator: str | None = None, sample: str | None = None,
             notes: list[str] | None = None, tags: list[str] | None = None) -> dict[str, Any]:
    """The protocol's ``[meta]`` with the command-line options applied: operator and sample
    replace, notes and tags add."""
    base = spec.model_dump() if spec is not None else {}
    meta = {"operator": base.get("operator", ""), "sample": base.get("sample", ""),
            "bench_serial": base.get("bench_serial", ""), "notes": base.get("notes", ""),
            "tags": list(base.get("tags", []))}
    if operator:
        meta["operator"] = operator
    if sample:
        meta["sample"] = sample
    if notes:
        meta["notes"] = "\n".join([n for n in [meta["notes"], *notes] if n])
    for tag in tags or []:
        if tag not in meta["tags"]:
            meta["tags"].append(tag)
    return meta
