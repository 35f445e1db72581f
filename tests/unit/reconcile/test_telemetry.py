"""Status fields from a metrics reading: fresh figures written, stale ones cleared (never zeroed), the
cumulative energy kept."""

from __future__ import annotations

from greenserve.api.v1alpha1 import status_patch
from greenserve.metrics.types import ServiceMetrics
from greenserve.reconcile.telemetry import telemetry_fields


def test_fresh_reading_writes_traffic_and_in_flight_stale_clears_them() -> None:
    fresh = ServiceMetrics(
        "ns",
        "m",
        power_w=150.0,
        requests_per_s=42.0,
        inflight_requests=7.25,
        pod_energy_j={"p0": 100.0},
        sampled_at=1.0,
        stale=False,
        source="scrape",
    )
    t = telemetry_fields({}, fresh, 400.0)
    assert t.fresh and t.fields.requests_per_second == 42.0 and t.fields.inflight_requests == 7.2
    assert t.fields.energy_joules == 100.0
    stale = ServiceMetrics("ns", "m", power_w=150.0, sampled_at=1.0, stale=True, missing=("pod:p0",))
    s = telemetry_fields(status_patch(t.fields, {}), stale, 400.0)
    assert not s.fresh and s.reason == "Stale"
    patch = status_patch(s.fields, status_patch(t.fields, {}))
    assert patch["inflightRequests"] is None and patch["requestsPerSecond"] is None
    assert "energyJoules" not in patch  # the cumulative figure stays as it was
