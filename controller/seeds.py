"""Named random streams of an experiment.

One protocol seed is split (``numpy.random.SeedSequence.spawn``) into independent
streams, one per purpose, so that what one part draws never shifts another's draws:
adding a draw to the network builder leaves the task's datasets, the initial edge state,
the batches and the noise as they were. The streams are the seed sequence's children in
a fixed order; that order is part of every recorded run's reproducibility and must not
change.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

_ORDER = ("network", "roles", "task", "init", "batch", "noise")


@dataclass(eq=False)
class SeedStreams:
    """The random streams of a run with seed ``seed``.

    Attributes
    ----------
    network : the random topology (Delaunay points, jammed packing).
    roles : node roles drawn at random (sources, grounds, outputs, output edges).
    task : the task's synthetic train and test sets.
    init : the initial edge state (conductances, taps, gate voltages).
    batch : batch sampling during training.
    noise_seed : integer seed of the backend's measurement noise.
    """

    seed: int
    network: np.random.Generator = field(init=False)
    roles: np.random.Generator = field(init=False)
    task: np.random.Generator = field(init=False)
    init: np.random.Generator = field(init=False)
    batch: np.random.Generator = field(init=False)
    noise_seed: int = field(init=False)

    def __post_init__(self) -> None:
        children = dict(zip(_ORDER, np.random.SeedSequence(self.seed).spawn(len(_ORDER)), strict=True))
        self.network = np.random.default_rng(children["network"])
        self.roles = np.random.default_rng(children["roles"])
        self.task = np.random.default_rng(children["task"])
        self.init = np.random.default_rng(children["init"])
        self.batch = np.random.default_rng(children["batch"])
        self.noise_seed = int(children["noise"].generate_state(1)[0])
