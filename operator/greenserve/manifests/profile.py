"""A ModelService as the autoscaling policy sees it: `service_profile(spec)`, pure.

The one mapping from the spec to `policy.profile.ServiceProfile`; the operator (reconcile/autoscale.py)
and the simulator (simulator/policies.py, which describes each of its models as a ModelService) both
call it.
"""

from __future__ import annotations

from typing import Final

from greenserve.api.v1alpha1 import ConsolidationPolicy, ModelServiceSpec, ScalingMetric
from greenserve.policy.energy import DEFAULT_GPU_PRODUCT, gpu_model_for
from greenserve.policy.profile import UTILISATION_AT_TARGET, ServiceProfile

# With an SLO, the energy policies size replicas by the queueing model for this share of requests within
# the SLO latency; Performance keeps the fixed target.
SLO_ATTAINMENT: Final = {ConsolidationPolicy.BALANCED: 0.995, ConsolidationPolicy.POWER_SAVING: 0.99}


def service_profile(spec: ModelServiceSpec) -> ServiceProfile:
    s = spec.scaling
    by_rps = s.metric == ScalingMetric.REQUESTS_PER_SECOND
    by_concurrency = s.metric == ScalingMetric.CONCURRENCY
    return ServiceProfile(
        # scaling.target is met at UTILISATION_AT_TARGET of a replica (see its CRD description).
        service_rate_rps=float(s.target) / UTILISATION_AT_TARGET if by_rps else None,
        target_utilization=UTILISATION_AT_TARGET if by_rps or by_concurrency else s.target / 100.0,
        min_replicas=s.min_replicas,
        max_replicas=s.max_replicas,
        target_concurrency=float(s.target) if by_concurrency else None,
        slo_p95_ms=float(spec.slo.latency_p95_ms) if spec.slo.latency_p95_ms else None,
        slo_attainment=SLO_ATTAINMENT.get(spec.energy.policy) if by_rps else None,
        gpu=gpu_model_for(spec.gpu.product or DEFAULT_GPU_PRODUCT),
        gpus=max(spec.gpu.count, 1),
        scale_down_delay_s=float(s.scale_down_delay_seconds),
        idle_to_zero_s=float(s.scale_to_zero_after_seconds) if s.scale_to_zero_after_seconds else None,
    )
