"""Simulator and benchmark of greenserve's scaling and consolidation policy against the peers' policies.

`greenserve simulate|bench` and `python -m greenserve.simulator bench [--quick]`. Modules: `traces`
(Azure CSVs, seeded diurnal/bursty), `cluster` (scheduler placement, node autoscaler, balloon slots),
`engine` (serving queue, energy, the oracle), `policies` (static peak, HPA-like, Knative-like and
greenserve running the operator's greenserve.policy code), `bench` (scenarios), `report` (table,
comparison summary, plots). The only operator code it imports is greenserve.policy.

Energy figures are SIMULATED from the power model in greenserve.policy.energy, not measured.
"""
