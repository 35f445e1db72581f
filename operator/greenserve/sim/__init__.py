"""Discrete-time simulator of greenserve and baseline autoscalers on a cluster of GPU nodes.

Energy figures are SIMULATED from the power model of shared/research/energy_anchors.md section 7
(greenserve.policy.energy). Entry points: `greenserve.sim.cli.main(argv)` (`simulate`, `bench`) and
`python -m greenserve.sim`. Modules: `traces` (Azure CSVs, seeded diurnal/bursty), `engine` (scheduler,
node autoscaler, serving queue, energy), `baselines` (static peak, HPA-like, Knative-like, oracle),
`greenserve_policy` (the operator's policy code in the loop), `bench` (scenarios, tables, verdicts),
`report` (PNG plots). The simulator imports only greenserve.policy from the operator.
"""
