"""Does a training curve stay down once it has converged?

``growth_after_convergence(errors)`` compares the error after convergence with its
floor. It reads the upper envelope of consecutive pairs, max(e_k, e_k+1), so that a
period-2 alternation (an edge clipped at gmin every other step, as in aging-linear-map
seed 0, whose error alternates between two branches about 2x apart while both descend)
is measured on one branch, not on whichever branch a window's median happens to pick.
The floor is the median of the last quarter of the batch errors; the running
median over ``window`` steps (so single batches do not count) first comes within
``reach`` (1.25) times the floor when the run has reached its floor; the growth is the largest rise of the running
median after that over the lowest running median reached before it (1: the error never
rose; within ``slack``: within noise). Measured against the lowest level reached, not
against the floor of the last quarter, a burst that does not come back down (allostery
seed 3 from 1e-30 to 7e-3 for the rest of the run) counts in full. Errors below ``roundoff`` times the first error
are rounding noise and count as that level (a double resolves squared voltages to
about 1e-32 V^2 at 1 V, far below any physical floor).

Reaching the floor means coming within 25 % of it, not within the noise slack: a run
that is still descending slowly from a plateau has not reached its floor. jammed-2x2
seed 1 sits at 2.8e-4 from step 40, hops to 1e-3 for about 25 steps at step 92 as an
edge leaves gmin, then descends to its floor of 2.1e-4 by step 1,000: with ``slack`` as
the reach, that hop during the descent read as growth 3.5 after convergence; counted from
where the run reaches its floor (step 163) the growth is 1.43. A burst from a level at
or below the final floor (every burst the safeguards were made for) counts in full
either way: that level is within the reach.

Protocols whose documented result IS a floor (protocols/bias/: a learning bias b_j
sets an error floor and drives the conductances along directions the task cannot see,
until edges pin at their bounds) are not expected to be monotone: as the drift pins
edges their error may rise and settle again (docs/benchmarks-bias.md: "once it has,
the floor depends on how far the network has drifted"). For them the criterion is
"no growth beyond the documented floor": ``band`` is that floor, errors below it count
as the band, so the growth is the largest running median after convergence over
max(floor, band), and within ``slack`` means the run stayed within its documented
floor. ``bias_floor`` gives the band from the floor law measured in
docs/benchmarks-bias.md (sqrt of the floor MSE 4.39 uV at rms b_j 1e-7 V^2 and eta 0.1,
growing as |b| / eta). Each seed draws its own b_j, part errors and task, so a seed's
floor can lie above the law: twin mismatch and taps add to b_j, edges that reach or
leave their bounds move it (floor.toml seed 0: 1.3e-10 against 1.9e-11, after passing
within 9e-12 of the map on the way), and some seeds draw a map
the lattice cannot fit (floor.toml seed 2: 5.7e-4 V^2, the same at zero bias). There the band is the larger of the bench's documented floor (the remedy
table's plain rows) and that seed's floor as benchmarks/bias_suppression.py measures
and docs/benchmarks-bias.md documents it ("the floor over bench seeds": the median test
error over the second half of the run). A burst above three times the documented floor
still counts in full. Protocols without a bias get no such band.

A bench measures its outputs with noise. A noisy bench cannot tell an error below its
resolution from zero, and learning on noisy measurements keeps the state jittering
around the solution (an error floor that grows with the rate), so the first pass of a
descending run through the solution can dip below where it then stays without any
growth of the error: ``resolution_band`` is that level, the square of
``noise_margin`` (5) times the rms noise of one output reading, the margin the
overclamp scheme's "auto" setting uses for "what the bench can resolve"
(clln.controller.schemes.Overclamp). Errors below it count as that level, like
round-off on a noise-free simulator; it is 0 there. It applies to squared-error costs
(V^2), not to the cosine cost of classification.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: a run has reached its floor when its running median first comes within this factor of
#: the floor (the median of its last quarter); growth is counted from there
REACH = 1.25


@dataclass(frozen=True)
class Convergence:
    floor: float           # median error of the last quarter
    converged_at: int      # last step (1-based) of the first window whose median is within slack x floor
    growth: float          # max running median after convergence / lowest one before it (1 = none)
    final: float           # last batch error


#: errors below this fraction of the first error are rounding noise
ROUNDOFF = 1e-20

#: sqrt(floor MSE) of plain coupled learning at rms b_j = BIAS_REF and eta = ETA_REF
#: (5x5 lattice, 2x2 map; docs/benchmarks-bias.md, benchmarks/bias_suppression.py)
FLOOR_RMS_V, BIAS_REF_V2, ETA_REF = 4.39e-6, 1e-7, 0.1


def bias_floor(learning_bias: float, eta: float) -> float:
    """Documented error floor (MSE, V^2) of plain coupled learning with an rms learning
    bias ``learning_bias`` (V^2) at nudge ``eta``: sqrt(MSE) grows as |b| / eta."""
    return (FLOOR_RMS_V * (learning_bias / BIAS_REF_V2) * (ETA_REF / eta)) ** 2


def resolution_band(noise_rms: float, noise_margin: float = 5.0) -> float:
    """Error (MSE, V^2) a bench with rms output reading noise ``noise_rms`` (V) cannot
    resolve: (noise_margin x noise_rms)^2, the overclamp's auto margin squared."""
    return (noise_margin * noise_rms) ** 2


def growth_after_convergence(errors: np.ndarray, *, window: int = 25, slack: float = 3.0,
                             reach: float = REACH, roundoff: float = ROUNDOFF,
                             band: float = 0.0) -> Convergence:
    """See the module docstring; ``errors`` are the batch errors step by step, ``band``
    a documented floor (task cost units; 0: none)."""
    e = np.asarray(errors, dtype=float)
    e = np.maximum(e, max(roundoff * e[0], band))
    if e.size > 1:
        e = np.maximum(e[:-1], e[1:])  # pair k covers steps k+1 and k+2 (1-based)
    floor = float(np.median(e[-max(1, e.size // 4):]))
    w = min(window, e.size)
    medians = np.array([np.median(e[i:i + w]) for i in range(0, e.size - w + 1)])
    k = int(np.argmax(medians <= reach * floor))
    after = medians[k:]
    return Convergence(floor, k + w + (1 if len(errors) > 1 else 0),
                       float((after / np.minimum.accumulate(after)).max()), float(errors[-1]))
