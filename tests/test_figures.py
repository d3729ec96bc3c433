"""Report figures: the legend off the network, node numbers, the accuracy curve of a
classification, allostery's target edges, the floor and resume points, no blank panels,
log-aware sweep medians."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402

from clln.analysis.report import report_figure  # noqa: E402
from clln.controller.store import RunStore  # noqa: E402
from tests.conftest import PROTOCOLS  # noqa: E402


def _run(tmp_path: Path, protocol: str, steps: int) -> tuple[RunStore, str]:
    from clln.compose import build_experiment, run_training
    from clln.protocol import load_protocol

    proto, text = load_protocol(PROTOCOLS / protocol)
    exp = build_experiment(proto, source=protocol, base_dir=PROTOCOLS, steps=steps)
    store = RunStore(tmp_path)
    outcome = run_training(exp, store, protocol_text=text, protocol_path=protocol)
    return store, outcome.run_id


def _net_axes(fig):  # noqa: ANN001, ANN202
    return next(ax for ax in fig.axes if ax.get_title().endswith("edges"))


def test_classification_report(tmp_path: Path) -> None:
    store, run_id = _run(tmp_path, "classification-3.toml", 200)
    store.log_event(run_id, "resume-point", "resumed", step=40)
    hist, info = store.history(run_id), store.run(run_id)["info"]
    fig = report_figure(store, run_id)
    fig.canvas.draw()
    acc_ax = next(ax for ax in fig.axes if ax.get_ylabel() == "test accuracy")
    (acc_line,) = acc_ax.get_lines()
    np.testing.assert_array_equal(acc_line.get_ydata(), hist.test_accuracy)
    err_ax = next(ax for ax in fig.axes if ax.get_xlabel() == "step" and ax is not acc_ax)
    tail = hist.test_error[-max(3, hist.test_error.size // 4):]
    flat = [ln for ln in err_ax.get_lines() if ln.get_label().startswith("floor")]
    assert flat and np.allclose(flat[0].get_ydata(), np.median(tail))
    resumed = [ln for ln in err_ax.get_lines() if ln.get_label() == "resumed"]
    assert resumed and np.allclose(resumed[0].get_xdata(), 40)
    net = _net_axes(fig)
    numbers = sorted(int(t.get_text()) for t in net.texts if t.get_text().isdigit())
    assert numbers == list(range(info["n_nodes"]))
    legend = net.get_legend().get_window_extent()
    assert legend.y1 <= net.get_window_extent().y0 + 1  # below the drawing, not over it
    plt.close(fig)
    store.close()


def test_allostery_target_edges_highlighted(tmp_path: Path) -> None:
    store, run_id = _run(tmp_path, "allostery.toml", 20)
    info = store.run(run_id)["info"]
    fig = report_figure(store, run_id)
    net = _net_axes(fig)
    red = [c for c in net.collections if isinstance(c, LineCollection)
           and c.get_label() == "target edges"]
    assert len(red) == 1
    pos = np.asarray(info["positions"])
    want = sorted(sorted(map(tuple, pos[list(e)].round(9).tolist())) for e in info["output_edges"])
    got = sorted(sorted(map(tuple, np.asarray(seg).round(9).tolist())) for seg in red[0].get_segments())
    assert got == want and len(got) == len(info["output_edges"])
    plt.close(fig)
    store.close()


def test_no_blank_panels() -> None:
    from clln.analysis.figures import _drop_empty

    fig, axes = plt.subplots(1, 3)
    axes[0].plot([1, 2], [3, 4])
    axes[2].scatter([1], [1])
    _drop_empty(fig, axes)
    assert fig.axes == [axes[0], axes[2]]
    plt.close(fig)


@pytest.mark.parametrize("values", [[1e-12, 1.0], [1e-12, 3e-7, 1.0], [2e-3, 8e-3, 1e-6, 5.0]])
def test_sweep_medians_are_log_aware(values: list[float]) -> None:
    from clln.sweep import _median

    ordered = sorted(values)
    n = len(ordered)
    expected = (ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] * ordered[n // 2]) ** 0.5)
    assert _median(values, log=True) == pytest.approx(expected, rel=1e-12)
    assert _median(values, log=False) == pytest.approx(float(np.median(values)))
