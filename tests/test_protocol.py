"""Protocol files: every shipped protocol is valid; every malformed one is refused
with a single-line ProtocolError naming the file, the dotted key and the allowed values."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from clln.controller.errors import ProtocolError, UserError
from clln.protocol import FORMAT_VERSION, Protocol, load_protocol, parse_protocol

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "protocols").glob("*.toml"))

# A minimal valid protocol; the cases below edit it one key at a time.
BASE = """\
format = 1
name = "t"
seed = 3

[network]
kind = "lattice"
rows = 4
cols = 4

[edges]
kind = "continuous"
gmin = 1e-5
gmax = 1e-2

[task]
kind = "regression"
inputs = 2
outputs = 2

[training]
rule = "coupled"
alpha = 0.05
eta = 0.1
steps = 10
"""


def edit(old: str, new: str, text: str = BASE) -> str:
    assert old in text, f"test bug: {old!r} not in the base protocol"
    return text.replace(old, new, 1)


def refuse(tmp_path: Path, text: str, name: str = "proto.toml") -> str:
    """Write ``text`` to a file, load it, and return the (checked) error message."""
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ProtocolError) as info:
        load_protocol(path)
    msg = str(info.value)
    assert "\n" not in msg, f"error message is not a single line: {msg!r}"
    assert msg.startswith(f"{path}: "), f"message does not start with the file name: {msg!r}"
    return msg


# -- valid protocols ----------------------------------------------------------------


def test_there_are_shipped_protocols() -> None:
    names = {p.name for p in SHIPPED}
    assert {"demo.toml", "regression-2x2.toml"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_protocol_parses(path: Path) -> None:
    proto, text = load_protocol(path)
    assert isinstance(proto, Protocol)
    assert proto.format == FORMAT_VERSION
    assert proto.name == path.stem
    assert text == path.read_text()


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_protocol_builds_an_experiment(path: Path) -> None:
    """Parsing is not enough: the roles must fit the network the protocol builds."""
    from clln.compose import build_experiment

    proto, _ = load_protocol(path)
    exp = build_experiment(proto, source=str(path), base_dir=path.parent, steps=1)
    assert exp.network.n_edges > 0
    assert exp.config.steps == 1
    assert exp.seed == proto.seed


def test_base_protocol_is_valid_and_defaults_apply() -> None:
    proto = parse_protocol(BASE, "base.toml")
    assert proto.training.eta == 0.1
    assert proto.training.batch == 30  # default
    assert proto.simulator.preset == "ideal"  # default table
    assert proto.network.periodic is False


def test_protocol_error_is_a_user_error() -> None:
    assert issubclass(ProtocolError, UserError)


# -- malformed protocols --------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ProtocolError) as info:
        load_protocol(path)
    msg = str(info.value)
    assert "\n" not in msg
    assert str(path) in msg
    assert "no such" in msg


def test_invalid_toml(tmp_path: Path) -> None:
    msg = refuse(tmp_path, BASE + "\n[training\n")
    assert "TOML" in msg


def test_duplicate_key_is_invalid_toml(tmp_path: Path) -> None:
    msg = refuse(tmp_path, edit("eta = 0.1\n", "eta = 0.1\neta = 0.2\n"))
    assert "TOML" in msg


@pytest.mark.parametrize(
    "old, new, key, allowed",
    [
        ("eta = 0.1\n", "eta = 0.1\nlearning_rate = 1\n", "training.learning_rate",
         ["alpha", "batch", "eta", "rule", "steps", "test_every"]),
        ('seed = 3\n', 'seed = 3\nbogus = 2\n', "bogus",
         ["description", "edges", "format", "name", "network", "seed", "task", "training"]),
        ("cols = 4\n", "cols = 4\nshape = 1\n", "network.shape", ["cols", "kind", "rows"]),
        ('gmax = 1e-2\n', 'gmax = 1e-2\nnoise = 0.1\n', "edges.noise", ["gmax", "gmin", "kind"]),
        ("outputs = 2\n", "outputs = 2\nlabels = 3\n", "task.labels", ["inputs", "outputs"]),
    ],
    ids=["training", "top-level", "network", "edges", "task"],
)
def test_unknown_key_lists_allowed_keys(tmp_path: Path, old: str, new: str, key: str,
                                        allowed: list[str]) -> None:
    msg = refuse(tmp_path, edit(old, new))
    assert f"{key}: unknown key" in msg
    listed = msg.split("allowed:", 1)[1]
    for k in allowed:
        assert k in listed


def test_unknown_table(tmp_path: Path) -> None:
    msg = refuse(tmp_path, BASE + "\n[bench]\nport = 1\n")
    assert "bench: unknown key" in msg
    assert "simulator" in msg.split("allowed:", 1)[1]


@pytest.mark.parametrize(
    "old, new, key, allowed",
    [
        ('rule = "coupled"', 'rule = "foo"', "training.rule", ["'coupled'", "'stepped'"]),
        ('kind = "lattice"', 'kind = "grid"', "network.kind", ["'lattice'", "'delaunay'", "'edge-list'"]),
        ('kind = "continuous"', 'kind = "analog"', "edges.kind", ["'continuous'", "'stepped'"]),
        ('kind = "regression"', 'kind = "ranking"', "task.kind",
         ["'regression'", "'allostery'", "'classification'"]),
        ("steps = 10\n", 'steps = 10\n[simulator]\npreset = "noisy"\n', "simulator.preset", ["'ideal'"]),
        ("steps = 10\n", 'steps = 10\n[simulator]\nsolver = "umfpack"\n', "simulator.solver",
         ["'auto'", "'cholmod'", "'qdldl'", "'superlu'"]),
    ],
    ids=["rule", "network-kind", "edges-kind", "task-kind", "preset", "solver"],
)
def test_bad_literal_lists_allowed_values(tmp_path: Path, old: str, new: str, key: str,
                                          allowed: list[str]) -> None:
    msg = refuse(tmp_path, edit(old, new))
    assert msg.split(": ")[1] == key
    bad = re.findall(r'= "([^"]*)"', new)[-1]
    assert repr(bad) in msg  # the offending value is quoted back
    listed = msg.split("allowed:", 1)[1]
    for value in allowed:
        assert value in listed


@pytest.mark.parametrize(
    "old, key",
    [
        ('name = "t"\n', "name"),
        ('[task]\nkind = "regression"\ninputs = 2\noutputs = 2\n', "task"),
        ('[network]\nkind = "lattice"\nrows = 4\ncols = 4\n', "network"),
        ('kind = "regression"\n', "task.kind"),
        ('kind = "lattice"\n', "network.kind"),
    ],
    ids=["name", "task", "network", "task.kind", "network.kind"],
)
def test_missing_required_key(tmp_path: Path, old: str, key: str) -> None:
    msg = refuse(tmp_path, edit(old, ""))
    assert f": {key}: required key is missing" in msg


@pytest.mark.parametrize(
    "old, new, key",
    [
        ("eta = 0.1", 'eta = "big"', "training.eta"),
        ('name = "t"', "name = 3", "name"),
        ("rows = 4", "rows = 2.5", "network.rows"),
        ("steps = 10", "steps = [10]", "training.steps"),
        ("[edges]\n", "[edges]\ninit = 0.001\n", "edges.init"),
        # TOML is typed: a boolean or a quoted number is a mistake, not a number.
        ("eta = 0.1", "eta = true", "training.eta"),
        ("steps = 10", 'steps = "10"', "training.steps"),
        ("cols = 4\n", 'cols = 4\nperiodic = "yes"\n', "network.periodic"),
    ],
    ids=["str-for-float", "int-for-str", "float-for-int", "list-for-int", "float-for-pair",
         "bool-for-float", "str-for-int", "str-for-bool"],
)
def test_wrong_type(tmp_path: Path, old: str, new: str, key: str) -> None:
    msg = refuse(tmp_path, edit(old, new))
    assert f": {key}" in msg


@pytest.mark.parametrize(
    "old, new, key",
    [
        ("eta = 0.1", "eta = -0.1", "training.eta"),
        ("alpha = 0.05", "alpha = 0", "training.alpha"),
        ("steps = 10", "steps = 0", "training.steps"),
        ("seed = 3", "seed = -1", "seed"),
        ("gmin = 1e-5", "gmin = -1e-5", "edges.gmin"),
        ("rows = 4", "rows = -4", "network.rows"),
        ("outputs = 2", "outputs = 0", "task.outputs"),
    ],
    ids=["eta", "alpha", "steps", "seed", "gmin", "rows", "outputs"],
)
def test_negative_or_zero_value(tmp_path: Path, old: str, new: str, key: str) -> None:
    msg = refuse(tmp_path, edit(old, new))
    assert f": {key}: " in msg
    assert "greater than" in msg or "must be within" in msg
    got = re.search(r"\(got (.*)\)$", msg)
    assert got, msg  # the offending value is quoted back
    assert float(got.group(1)) == float(new.split("=")[1])


def test_format_missing(tmp_path: Path) -> None:
    msg = refuse(tmp_path, edit("format = 1\n", ""))
    assert "format" in msg
    assert "missing" in msg
    assert str(FORMAT_VERSION) in msg


@pytest.mark.parametrize("value", ["2", "0", '"1"', "1.0", "true"])
def test_format_unsupported(tmp_path: Path, value: str) -> None:
    """Only the integer FORMAT_VERSION is accepted (``true`` and ``1.0`` compare equal
    to 1 in Python but are not format 1)."""
    msg = refuse(tmp_path, edit("format = 1\n", f"format = {value}\n"))
    assert ": format: " in msg
    assert f"allowed: {FORMAT_VERSION}" in msg


def test_newer_format_says_upgrade(tmp_path: Path) -> None:
    msg = refuse(tmp_path, edit("format = 1\n", f"format = {FORMAT_VERSION + 1}\n"))
    assert "upgrade" in msg


# -- kind-specific keys -----------------------------------------------------------------


def test_lattice_needs_rows(tmp_path: Path) -> None:
    msg = refuse(tmp_path, edit("rows = 4\n", ""))
    assert ": network: " in msg
    assert "'lattice'" in msg and "'rows'" in msg


def test_lattice_refuses_nodes(tmp_path: Path) -> None:
    msg = refuse(tmp_path, edit("cols = 4\n", "cols = 4\nnodes = 10\n"))
    assert ": network: " in msg
    assert "nodes" in msg and "'lattice'" in msg
    listed = msg.split("allowed:", 1)[1]
    for k in ("cols", "periodic", "rows"):
        assert k in listed
    assert "nodes" not in listed


def test_delaunay_needs_nodes(tmp_path: Path) -> None:
    msg = refuse(tmp_path, edit("rows = 4\ncols = 4\n", "", edit('"lattice"', '"delaunay"')))
    assert ": network: " in msg
    assert "'delaunay'" in msg and "'nodes'" in msg


def test_delaunay_refuses_rows(tmp_path: Path) -> None:
    text = edit("rows = 4\ncols = 4\n", "nodes = 20\nrows = 4\n", edit('"lattice"', '"delaunay"'))
    msg = refuse(tmp_path, text)
    assert ": network: " in msg and "rows" in msg and "'delaunay'" in msg


def test_edge_list_needs_file(tmp_path: Path) -> None:
    msg = refuse(tmp_path, edit("rows = 4\ncols = 4\n", "", edit('"lattice"', '"edge-list"')))
    assert "'edge-list'" in msg and "'file'" in msg


def test_classification_needs_classes(tmp_path: Path) -> None:
    msg = refuse(tmp_path, edit('kind = "regression"', 'kind = "classification"'))
    assert ": task: " in msg and "'classes'" in msg


def test_classes_refused_for_regression(tmp_path: Path) -> None:
    msg = refuse(tmp_path, edit("outputs = 2\n", "outputs = 2\nclasses = 3\n"))
    assert ": task: " in msg and "'classes'" in msg and "'regression'" in msg


def test_gmin_not_below_gmax(tmp_path: Path) -> None:
    msg = refuse(tmp_path, edit("gmin = 1e-5", "gmin = 1"))
    assert ": edges: " in msg and "gmin" in msg and "gmax" in msg


def test_rule_coupled_with_stepped_edges_is_valid() -> None:
    """Coupled learning on potentiometers: each edge goes to its nearest tap."""
    proto = parse_protocol(edit('kind = "continuous"', 'kind = "stepped"'), "ok.toml")
    assert proto.edges.kind == "stepped" and proto.training.rule == "coupled"


def test_rule_stepped_with_stepped_edges_is_valid() -> None:
    text = edit('rule = "coupled"', 'rule = "stepped"', edit('kind = "continuous"', 'kind = "stepped"'))
    proto = parse_protocol(text, "ok.toml")
    assert proto.edges.kind == "stepped" and proto.training.rule == "stepped"


def test_only_first_error_is_reported_with_a_count(tmp_path: Path) -> None:
    text = edit("eta = 0.1", "eta = -1", edit("alpha = 0.05", "alpha = -1"))
    msg = refuse(tmp_path, text)
    assert "(and 1 more)" in msg


def test_parse_protocol_names_the_source() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_protocol(edit('rule = "coupled"', 'rule = "foo"'), "somewhere/p.toml")
    assert str(info.value).startswith("somewhere/p.toml: training.rule: ")


@pytest.mark.parametrize(("old", "new", "key"), [
    ("outputs = 2\n", "outputs = 2\ninput_range = [nan, 1.0]\n", "task.input_range.0"),
    ("gmax = 1e-2", "gmax = inf", "edges.gmax"),
    ("eta = 0.1", "eta = nan", "training.eta"),
])
def test_non_finite_numbers_are_refused(old: str, new: str, key: str) -> None:
    with pytest.raises(ProtocolError, match=key.replace(".", r"\.")):
        parse_protocol(edit(old, new), "nan.toml")
