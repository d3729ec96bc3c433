"""An interrupted sweep writes partial results; ``--resume`` runs only what is missing."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from clln.controller.store import RunStore
from clln.sweep import parse_sweep, run_sweep
from tests.conftest import PROTOCOLS

pytestmark = pytest.mark.slow  # subprocesses or long runs: left out of -m "not slow"

SWEEP = f"""
format = 1
name = "resumable"
protocol = "{PROTOCOLS / 'regression-2x2.toml'}"
seeds = [3, 4]

[set]
"training.steps" = 15
"training.test_every" = 5

[grid]
"training.eta" = [0.1, 0.3]
"""


def _client():  # noqa: ANN202
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                           dashboard_address=None)
    return Client(cluster), cluster


def _completed(out: Path) -> dict[int, str]:
    with RunStore(out) as store:
        return {r["info"]["sweep"]["index"]: r["id"] for r in store.index()
                if r["status"] == "completed"}


def test_interrupted_sweep_writes_partial_results_and_resumes(tmp_path: Path) -> None:
    sweep = parse_sweep(SWEEP, tmp_path / "sweep.toml")
    out = tmp_path / "runs"
    seen: list[int] = []

    def stop_after_two(row: dict) -> None:
        seen.append(row["index"])
        if len(seen) == 2:
            raise KeyboardInterrupt

    client, cluster = _client()
    try:
        with pytest.raises(KeyboardInterrupt) as info:
            run_sweep(sweep, out, client, on_result=stop_after_two)
    finally:
        client.close()
        cluster.close()
    partial = info.value.partial
    assert partial.name.startswith("resumable-") and "partial" in partial.name
    with (partial / "results.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 4
    assert {int(r["index"]) for r in table if r["status"] == "completed"} == set(seen)
    assert all(r["status"] == "not run" for r in table if int(r["index"]) not in seen)

    before = _completed(out)
    assert set(seen) <= set(before)
    ran: list[dict] = []
    client, cluster = _client()
    try:
        outcome = run_sweep(sweep, out, client, on_result=ran.append, resume=True)
    finally:
        client.close()
        cluster.close()
    assert [r["status"] for r in outcome.rows] == ["completed"] * 4
    after = _completed(out)
    assert set(after) == {0, 1, 2, 3}
    for index, run_id in before.items():  # finished runs were taken, not run again
        assert outcome.rows[index]["run_id"] == run_id == after[index]
    with RunStore(out) as store:  # no point completed twice
        assert sum(r["status"] == "completed" for r in store.list_runs()) == 4
