"""The activator: holds requests for a ModelService with no ready replica, wakes it, forwards them.

While a `minReplicas: 0` ModelService has no ready replica its Service routes here (reconcile/routing.py,
as Knative routes to its activator). `proxy.py` holds each request, marks demand on the ModelService
(which wakes it: policy/autoscaling.py), and forwards the request to a replica once the ModelService's
private Service lists a ready endpoint, or answers 503 with Retry-After past a bounded wait.
"""
