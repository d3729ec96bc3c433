"""Analyses computed from a network or a run, and report figures."""
