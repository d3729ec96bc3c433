"""Analyses computed from a network or a recorded run, and report figures.

* :mod:`clln.analysis.susceptibility` — physical Hessian, susceptibility vectors and
  norms (exact or randomized), eigenmodes, partial susceptibility (seed 001).
* :mod:`clln.analysis.cost` — output Jacobian, cost gradient and Hessian, stiff modes.
* :mod:`clln.analysis.aging` — relaxation fits and correlation lengths (seed 000).
* :mod:`clln.analysis.analyze` — all of it on a run from the store (``clln analyze``).
* :mod:`clln.analysis.report` — the training report of ``clln train``.
"""
