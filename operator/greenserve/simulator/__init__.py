"""Simulator and benchmark of greenserve's scaling and consolidation policy against baselines (issue 4).

Energy figures are SIMULATED from the power model in greenserve.policy.energy, not measured.
"""
