"""Jammed soft-disk packings: real contacts, no rattlers, force balance, target
coordination, determinism, and the protocol's ``kind = "jammed"``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clln.controller import jammed, jammed_packing
from clln.controller.errors import NetworkError, ProtocolError
from clln.controller.packing import _radii, _SoftDisks
from clln.protocol import load_protocol


@pytest.fixture(scope="module", params=[False, True], ids=["walls", "periodic"])
def packing(request):
    return jammed_packing(100, np.random.default_rng(7), coordination=4.6,
                          periodic=request.param), request.param


def test_edges_are_exactly_the_overlapping_pairs(packing) -> None:
    pack, periodic = packing
    net = pack.network
    x, r = net.positions, pack.radii
    delta = x[:, None, :] - x[None, :, :]
    if periodic:
        delta -= np.round(delta)
    dist = np.sqrt(np.sum(delta**2, axis=-1))
    overlap = (r[:, None] + r[None, :] - dist) > 1e-9 * (r[:, None] + r[None, :])
    np.fill_diagonal(overlap, False)
    adjacency = np.zeros_like(overlap)
    adjacency[net.edges[:, 0], net.edges[:, 1]] = True
    adjacency |= adjacency.T
    assert np.array_equal(adjacency, overlap)


def test_no_rattlers_connected_and_near_target(packing) -> None:
    pack, _ = packing
    net = pack.network
    assert net.degrees().min() >= 3
    assert net.components()[0] == 1
    assert pack.coordination == pytest.approx(2 * net.n_edges / net.n_nodes)
    assert abs(pack.coordination - 4.6) < 0.15
    assert 0.8 < pack.packing_fraction < 0.98
    assert 0.75 * 100 < net.n_nodes <= 100


def test_packing_is_relaxed(packing) -> None:
    pack, periodic = packing
    full_radii = _radii(100, pack.packing_fraction)
    assert np.allclose(full_radii[pack.kept], pack.radii)
    disks = _SoftDisks(full_radii, periodic)
    energy, grad = disks.energy_gradient(pack.disk_positions.ravel())
    assert energy == pytest.approx(pack.energy, rel=1e-9)
    # net forces vanish against the typical contact force (overlap ~ sqrt(2 U / contacts))
    typical = np.sqrt(2 * energy / pack.network.n_edges)
    assert np.abs(grad).max() < 1e-3 * typical


def test_deterministic_given_the_seed() -> None:
    a = jammed(80, np.random.default_rng(3))
    b = jammed(80, np.random.default_rng(3))
    assert np.array_equal(a.edges, b.edges) and np.array_equal(a.positions, b.positions)


def test_coordination_out_of_range_is_a_network_error() -> None:
    with pytest.raises(NetworkError, match="coordination"):
        jammed_packing(60, np.random.default_rng(0), coordination=3.0)


PROTO = """\
format = 1
name = "j"
seed = 2

[network]
kind = "jammed"
nodes = 60
{extra}

[task]
kind = "regression"

[training]
steps = 3
"""


def test_protocol_builds_a_jammed_network(tmp_path: Path) -> None:
    from clln.compose import build_experiment

    path = tmp_path / "j.toml"
    path.write_text(PROTO.format(extra="coordination = 4.4\nperiodic = true"))
    proto, _ = load_protocol(path)
    exp = build_experiment(proto, source=str(path), base_dir=tmp_path)
    net = exp.network
    assert net.degrees().min() >= 3 and net.components()[0] == 1
    assert abs(2 * net.n_edges / net.n_nodes - 4.4) < 0.2


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ("rows = 4", "rows"),
        ("coordination = 7.0", "coordination in 4.0..5.6"),
        ("file = 'x.txt'", "file"),
    ],
)
def test_protocol_refuses_bad_jammed_keys(tmp_path: Path, extra: str, needle: str) -> None:
    path = tmp_path / "j.toml"
    path.write_text(PROTO.format(extra=extra))
    with pytest.raises(ProtocolError) as info:
        load_protocol(path)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{path}: network") and needle in msg


def test_protocol_refuses_too_few_disks(tmp_path: Path) -> None:
    path = tmp_path / "j.toml"
    path.write_text(PROTO.format(extra="").replace("nodes = 60", "nodes = 8"))
    with pytest.raises(ProtocolError, match="nodes >= 16"):
        load_protocol(path)
