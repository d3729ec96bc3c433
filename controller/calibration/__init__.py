"""Calibration of edge hardware: DAQ channels, per-edge tap -> conductance tables, and
in-situ network tomography.

The procedures drive a bench only through two small interfaces defined here,
:class:`CalibrationTarget` (raw DAQ acquisitions, grounded-input readings, batched tap
writes; ``drivers.hardware.HardwareBackend`` implements it, limits checked before
anything is written) and :class:`ResistanceMeter` (an SMU's 4-wire resistance between
two nodes of the network), so they run unchanged on the emulated bench and on a real one.

Physics
-------
Every node voltage is read, but no current is: the sources are voltage outputs. With
node voltages ``v`` (n,) under one boundary condition, Kirchhoff's current law at
every node that is not held by an output or the ground is

    sum_j B_ji g_j (B v)_j = 0        for every free node i,                 (KCL)

with ``B`` the (m, n) incidence matrix and ``g`` (m,) the conductances: *linear and
homogeneous in g* given the measured voltages. Stacking (KCL) over many boundary
conditions gives ``A g = 0``; ``g`` is the null vector of ``A`` (the right singular
vector of its smallest singular value), which fixes the conductances up to one common
scale.

One tap state is not enough on a bench whose outputs drive few nodes: on the 16-edge
reference bench (sources 0 and 2, clamps 3 and 5, ground 7) the stacked (KCL) of the
clamped and the floating boundary conditions has rank 14 of 16, so a second
direction besides the scale leaves every measured voltage unchanged. Linking tap
states resolves it: an edge at the same tap in two states has the same conductance
in both, so the unknowns are the distinct (edge, tap) pairs and the states share
them. The calibration steps half of the edges through the tap levels while the other
half rest at a reference tap, then the other way round; the joint null space is then
one-dimensional (the design is checked for it: the ratio of the two smallest singular
values is reported and must be large).

The scale comes from something known in ohms: an SMU's 4-wire two-point resistance
between two nodes (the driven nodes held at 0 V, clamps open), which the relative
conductances predict up to the scale, when the bench has one (``scale = "smu"``);
otherwise the datasheet: the mean tap-0 resistance over the calibrated edges is set to
its nominal value, r_series + r_wiper (``scale = "prior"``; with a 1 % series resistor
and +-25 ohm wipers, the mean of 16 edges is known to about 0.4 %).

DAQ channels: an AI reading is ``(1 + a_k) v_k + c_k``. The offsets ``c_k`` are read
with the inputs grounded. The gains ``a_k`` stay the DAQ's factory calibration (75 ppm
class): only an external voltage reference could fix them absolutely, and the network
itself fixes them poorly (a gain error on a node's channel is nearly the same, in
(KCL), as a change of its edges' conductances; on the emulated pot-bench a joint fit
resolved them no better than their spread). A gain common to every channel leaves
(KCL) unchanged, so the conductances do not depend on it. AO channel k drives node d_k,
read by its (offset-corrected) AI channel: the node sits at
``(1 + alpha_k) x_k + beta_k - Z_k I_k`` for command x_k, with I_k the current the
output delivers (from the measured voltages and the conductances) and Z_k its output
impedance; the three are fitted per channel.

Per edge, the measured resistances R(D) at the tap levels are fitted with
R(D) = R0 + D Rstep (weights 1/R^2, i.e. relative errors); the residuals, smooth
(integral nonlinearity), are interpolated over every tap by a cubic spline and kept
as the residual table, so the calibrated table is 1 / (R0 + D Rstep + residual(D)).

Modules
-------
:mod:`~.targets` (what the procedures drive), :mod:`~.fileformat` (the calibration file),
:mod:`~.numerics` (KCL, tomography, fits), :mod:`~.designs` (tap states and surveys),
:mod:`~.check` (the tomography check), :mod:`~.procedure` (the calibration) and
:mod:`~.verify` (verification). Every name is importable from this package.
"""

from __future__ import annotations

from clln.controller.calibration.check import (
    EdgeCheck,
    check_edges,
    classify,
)
from clln.controller.calibration.designs import (
    DRIVE_FRACTION,
    calibration_states,
    check_states,
    meter_scales,
    survey,
    survey_restoring,
    tap_levels,
)
from clln.controller.calibration.fileformat import (
    FORMAT_VERSION,
    Calibration,
    CalibrationWarning,
    ChannelCalibration,
    EdgeFits,
    calibration_problems,
    load_calibration,
    new_id,
)
from clln.controller.calibration.numerics import (
    Batch,
    Survey,
    Tomography,
    edge_table,
    effective_resistance,
    fit_ao,
    fit_line,
    free_nodes,
    held_nodes,
    kcl_matrix,
    solve_tomography,
)
from clln.controller.calibration.procedure import (
    CalibrationRun,
    calibrate,
)
from clln.controller.calibration.targets import (
    CalibrationTarget,
    Progress,
    ResistanceMeter,
)
from clln.controller.calibration.verify import (
    Verification,
    verify,
)

__all__ = [
    "Batch",
    "Calibration",
    "CalibrationRun",
    "CalibrationTarget",
    "CalibrationWarning",
    "ChannelCalibration",
    "DRIVE_FRACTION",
    "EdgeCheck",
    "EdgeFits",
    "FORMAT_VERSION",
    "Progress",
    "ResistanceMeter",
    "Survey",
    "Tomography",
    "Verification",
    "calibrate",
    "calibration_problems",
    "calibration_states",
    "check_edges",
    "check_states",
    "classify",
    "edge_table",
    "effective_resistance",
    "fit_ao",
    "fit_line",
    "free_nodes",
    "held_nodes",
    "kcl_matrix",
    "load_calibration",
    "meter_scales",
    "new_id",
    "solve_tomography",
    "survey",
    "survey_restoring",
    "tap_levels",
    "verify",
]
