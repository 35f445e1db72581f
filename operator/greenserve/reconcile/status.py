"""Pure status computation: observed Deployment and pods in, ModelService conditions and fields out.

`Ready` means "able to serve the current spec": at least one replica running the current pod template
is Ready. A scale-up (new replicas waiting for a node) keeps it True; `Progressing` says the Deployment
is still moving, `Scaling` that the replica count is, and `Degraded` names a fault (a crashing model
server, an image that cannot be pulled, pods rejected by admission) with the pod's own reason.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from greenserve.api import conditions as cond
from greenserve.api.constants import ANN_SPEC_HASH
from greenserve.api.objects import pod_ready
from greenserve.api.v1alpha1 import ModelServiceStatus

# Waiting reasons of a container that will not start by itself (kubelet's names).
_IMAGE_PULL = frozenset(
    {"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull", "RegistryUnavailable"}
)
_CONTAINER_CONFIG = frozenset({"CreateContainerConfigError", "CreateContainerError", "RunContainerError"})
# A Failed pod (evicted, node shut down) stays in the API until garbage-collected; only a recent one is news.
FAILED_POD_RECENT_S = 600.0
# The serving container's startup budget (startupProbe 120 x 5 s in manifests/builders.py): a model server
# that runs this long without its model becoming available will not load it (TF Serving keeps polling a
# missing base path instead of exiting).
MODEL_LOAD_TIMEOUT_S = 600.0
MESSAGE_MAX = 1024


@dataclass(frozen=True)
class Observed:
    """What the operator saw of the objects it owns."""

    desired: int
    deployment: Mapping[str, Any] | None
    pods: Sequence[Mapping[str, Any]] = ()
    gpus_per_replica: int = 0
    surge: int = 0  # a consolidation move's replacement, on top of `desired`
    now: dt.datetime | None = None


@dataclass(frozen=True)
class Failure:
    """A fault the user has to act on; `reason` becomes the Ready/Degraded reason."""

    reason: str
    message: str
    pod: str | None = None
    container: str | None = None
    exit_code: int | None = None


@dataclass(frozen=True)
class Assessment:
    ready: cond.ConditionUpdate
    progressing: cond.ConditionUpdate
    degraded: cond.ConditionUpdate
    fault: Failure | None
    current_ready: int

    @property
    def conditions(self) -> tuple[cond.ConditionUpdate, ...]:
        return (self.ready, self.progressing, self.degraded)


def _clip(text: str) -> str:
    return text if len(text) <= MESSAGE_MAX else text[: MESSAGE_MAX - 3] + "..."


def _live(pods: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [p for p in pods if not p.get("metadata", {}).get("deletionTimestamp")]


def _template_hash(dep: Mapping[str, Any] | None) -> str | None:
    if dep is None:
        return None
    meta = ((dep.get("spec") or {}).get("template") or {}).get("metadata") or {}
    value = (meta.get("annotations") or {}).get(ANN_SPEC_HASH)
    return str(value) if value else None


def current_pods(obs: Observed) -> list[Mapping[str, Any]]:
    """Live pods running the current pod template (all live pods when the template carries no hash)."""
    want = _template_hash(obs.deployment)
    pods = _live(obs.pods)
    if want is None:
        return pods
    return [p for p in pods if (p.get("metadata", {}).get("annotations") or {}).get(ANN_SPEC_HASH) == want]


def _terminated(pod: str, container: str, term: Mapping[str, Any]) -> Failure:
    code = term.get("exitCode")
    exit_code = int(code) if isinstance(code, int) else None
    why = term.get("reason") or "Error"
    detail = (term.get("message") or "").strip()
    if why == "OOMKilled":
        return Failure(
            cond.REASON_OOM_KILLED,
            _clip(
                f"pod {pod}: container {container} was OOMKilled (exit code {exit_code}): the model needs "
                "more memory than spec.runtime.resources.limits.memory"
            ),
            pod,
            container,
            exit_code,
        )
    text = f"pod {pod}: container {container} exited with code {exit_code} ({why})"
    return Failure(
        cond.REASON_MODEL_LOAD_FAILED,
        _clip(f"{text}: {detail}" if detail else f"{text}; check spec.model.storageUri and the pod's log"),
        pod,
        container,
        exit_code,
    )


def _container_failure(pod: str, cs: Mapping[str, Any], now: dt.datetime | None) -> Failure | None:
    name = str(cs.get("name") or "?")
    state = cs.get("state") or {}
    last = (cs.get("lastState") or {}).get("terminated")
    waiting = state.get("waiting") or {}
    why = waiting.get("reason")
    if why in _IMAGE_PULL:
        msg = f"pod {pod}: container {name}: {why}: {waiting.get('message') or 'cannot pull the image'}"
        return Failure(cond.REASON_IMAGE_PULL_FAILED, _clip(msg), pod, name)
    if why in _CONTAINER_CONFIG:
        msg = f"pod {pod}: container {name}: {why}: {waiting.get('message') or 'cannot create the container'}"
        return Failure(cond.REASON_CONTAINER_CONFIG, _clip(msg), pod, name)
    term = state.get("terminated")
    if term and term.get("exitCode") not in (0, None):
        return _terminated(pod, name, term)
    if why == "CrashLoopBackOff":
        if last:
            return _terminated(pod, name, last)
        msg = f"pod {pod}: container {name} keeps crashing (CrashLoopBackOff)"
        return Failure(cond.REASON_MODEL_LOAD_FAILED, msg, pod, name)
    # Restarted after a crash and not Ready again yet (before kubelet's back-off shows CrashLoopBackOff).
    if last and not cs.get("ready") and last.get("exitCode") not in (0, None):
        return _terminated(pod, name, last)
    started = (state.get("running") or {}).get("startedAt")
    if started and not cs.get("ready") and now is not None:
        age = (now - _parse_time(str(started))).total_seconds()
        if age > MODEL_LOAD_TIMEOUT_S:
            msg = (
                f"pod {pod}: container {name} has run {int(age)} s without its model becoming available; "
                "check spec.model.storageUri (a SavedModel under a numbered version directory)"
            )
            return Failure(cond.REASON_MODEL_LOAD_TIMEOUT, _clip(msg), pod, name)
    return None


def _parse_time(raw: str) -> dt.datetime:
    return dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))


def _recent(pod: Mapping[str, Any], now: dt.datetime | None) -> bool:
    if now is None:
        return True
    stamps = [c.get("lastTransitionTime") for c in (pod.get("status") or {}).get("conditions") or []]
    stamps.append((pod.get("status") or {}).get("startTime"))
    parsed = [_parse_time(str(s)) for s in stamps if s]
    return not parsed or (now - max(parsed)).total_seconds() <= FAILED_POD_RECENT_S


def pod_failure(pod: Mapping[str, Any], now: dt.datetime | None = None) -> Failure | None:
    name = str(pod.get("metadata", {}).get("name") or "?")
    status = pod.get("status") or {}
    if status.get("phase") == "Failed":
        if not _recent(pod, now):
            return None
        why = status.get("reason") or "Failed"
        reason = cond.REASON_POD_EVICTED if why == "Evicted" else cond.REASON_POD_FAILED
        return Failure(reason, _clip(f"pod {name}: {why}: {status.get('message') or 'pod failed'}"), name)
    for cs in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        found = _container_failure(name, cs, now)
        if found is not None:
            return found
    return None


def deployment_failure(dep: Mapping[str, Any] | None) -> Failure | None:
    """The ReplicaSet's FailedCreate (admission, quota), which the Deployment controller copies into the
    Deployment's ReplicaFailure condition, or a rollout past its progress deadline."""
    for c in ((dep or {}).get("status") or {}).get("conditions") or []:
        message = str(c.get("message") or "")
        if c.get("type") == "ReplicaFailure" and c.get("status") == "True":
            if "violates PodSecurity" in message:
                return Failure(cond.REASON_POD_SECURITY, _clip(message))
            if "exceeded quota" in message:
                return Failure(cond.REASON_QUOTA, _clip(message))
            return Failure(cond.REASON_REPLICA_FAILURE, _clip(f"{c.get('reason')}: {message}"))
    for c in ((dep or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded":
            return Failure(cond.REASON_PROGRESS_DEADLINE, _clip(str(c.get("message") or "")))
    return None


def unschedulable_message(pods: Sequence[Mapping[str, Any]]) -> str | None:
    for pod in _live(pods):
        for c in (pod.get("status") or {}).get("conditions") or []:
            if (
                c.get("type") == "PodScheduled"
                and c.get("status") == "False"
                and c.get("reason") == "Unschedulable"
            ):
                return _clip(f"pod {pod['metadata']['name']}: {c.get('message', 'unschedulable')}")
    return None


def find_fault(obs: Observed, current_ready: int) -> Failure | None:
    """The most specific fault: a pod's own, then the ReplicaSet's, then no node for a service that has
    no replica at all (with replicas serving, a pending one is a node being provisioned, not a fault)."""
    if obs.desired == 0:
        return None
    current = current_pods(obs)
    for pod in current:
        found = pod_failure(pod, obs.now)
        if found is not None:
            return found
    found = deployment_failure(obs.deployment)
    if found is not None:
        return found
    dep_ready = int(((obs.deployment or {}).get("status") or {}).get("readyReplicas") or 0)
    if current_ready == 0 and dep_ready == 0:
        blocked = unschedulable_message(current)
        if blocked:
            return Failure(cond.REASON_UNSCHEDULABLE, blocked)
    return None


def _progressing(obs: Observed, current_ready: int) -> cond.ConditionUpdate:
    dep = obs.deployment
    if dep is None:
        return cond.ConditionUpdate(
            cond.PROGRESSING, True, cond.REASON_PROGRESSING, "creating the Deployment"
        )
    st = dep.get("status") or {}
    replicas = int(st.get("replicas") or 0)
    updated = int(st.get("updatedReplicas") or 0)
    rolled = int(st.get("observedGeneration") or 0) >= int(dep.get("metadata", {}).get("generation") or 0)
    target = obs.desired + obs.surge
    if not rolled or updated < target or replicas > updated:
        return cond.ConditionUpdate(
            cond.PROGRESSING,
            True,
            cond.REASON_ROLLING_OUT,
            f"{updated}/{target} replicas of the current spec",
        )
    if current_ready < target:
        return cond.ConditionUpdate(
            cond.PROGRESSING, True, cond.REASON_STARTING, f"{current_ready}/{target} replicas ready"
        )
    if replicas > target:
        return cond.ConditionUpdate(
            cond.PROGRESSING, True, cond.REASON_TERMINATING, f"{replicas} replicas, {target} desired"
        )
    return cond.ConditionUpdate(
        cond.PROGRESSING, False, cond.REASON_COMPLETE, f"{current_ready}/{target} ready"
    )


def assess(obs: Observed) -> Assessment:
    current_ready = sum(1 for p in current_pods(obs) if pod_ready(p))
    fault = find_fault(obs, current_ready)
    dep_ready = int(((obs.deployment or {}).get("status") or {}).get("readyReplicas") or 0)
    if obs.desired == 0:
        ready = cond.ConditionUpdate(
            cond.READY, True, cond.REASON_SCALED_TO_ZERO, "scaled to zero while idle"
        )
    elif obs.deployment is None:
        ready = cond.ConditionUpdate(cond.READY, False, cond.REASON_PROGRESSING, "Deployment not created yet")
    elif current_ready > 0:
        msg = f"{current_ready}/{obs.desired} replicas of the current spec ready"
        ready = cond.ConditionUpdate(cond.READY, True, cond.REASON_AVAILABLE, msg)
    elif fault is not None:
        ready = cond.ConditionUpdate(cond.READY, False, fault.reason, fault.message)
    elif dep_ready > 0:
        # Knative's convention: Unknown while the new spec rolls out and the previous one still serves.
        msg = f"the current spec is rolling out; {dep_ready} replicas of the previous spec still serve"
        ready = cond.ConditionUpdate(cond.READY, "Unknown", cond.REASON_ROLLING_OUT, msg)
    else:
        msg = f"0/{obs.desired} replicas ready"
        ready = cond.ConditionUpdate(cond.READY, False, cond.REASON_PROGRESSING, msg)
    degraded = (
        cond.ConditionUpdate(cond.DEGRADED, True, fault.reason, fault.message)
        if fault is not None
        else cond.ConditionUpdate(cond.DEGRADED, False, cond.REASON_NO_FAILURE, "")
    )
    return Assessment(ready, _progressing(obs, current_ready), degraded, fault, current_ready)


def fault_conditions(reason: str, message: str) -> tuple[cond.ConditionUpdate, ...]:
    """Conditions for a fault found before anything could be applied (invalid spec, apply failure)."""
    return (
        cond.ConditionUpdate(cond.READY, False, reason, message),
        cond.ConditionUpdate(cond.PROGRESSING, False, reason, "nothing is applied until this is fixed"),
        cond.ConditionUpdate(cond.DEGRADED, True, reason, message),
    )


def status_fields(obs: Observed) -> ModelServiceStatus:
    st = (obs.deployment or {}).get("status", {}) or {}
    # The pods' own Ready when they are ahead of the Deployment's status (its controller sums the same
    # pods' events into it, later): Ready and readyReplicas then say the same thing.
    ready = max(int(st.get("readyReplicas") or 0), sum(1 for p in _live(obs.pods) if pod_ready(p)))
    return ModelServiceStatus(
        replicas=int(st.get("replicas") or 0),
        ready_replicas=ready,
        desired_replicas=obs.desired,
        gpus=ready * obs.gpus_per_replica,
    )


@dataclass(frozen=True)
class ScaleIntent:
    """What the autoscaler decided this pass, for the Scaling condition and the rescale Event."""

    previous: int | None  # the count before this pass (None: first pass)
    desired: int
    reason: str  # the policy's CamelCase reason (ScaleUp, Steady, HoldMetricsMissing, ...)
    message: str
    capped_from: int | None = None  # the count the GPU cap lowered, if it did

    @property
    def changed(self) -> bool:
        return self.previous is not None and self.previous != self.desired


def scaling_condition(
    intent: ScaleIntent, previous: Mapping[str, Any] | None, obs: Observed, current_ready: int
) -> cond.ConditionUpdate:
    """`Scaling` is True from the pass that changes the count until the Deployment has reached it, then
    False with the policy's reason (Steady, Stabilizing, HoldMetricsMissing, GpuCapReached, ...)."""
    if intent.changed:
        up = intent.desired > (intent.previous or 0)
        return cond.ConditionUpdate(
            cond.SCALING,
            True,
            cond.REASON_SCALE_UP if up else cond.REASON_SCALE_DOWN,
            f"{intent.previous} -> {intent.desired} replicas: {intent.message}",
        )
    st = (obs.deployment or {}).get("status") or {}
    replicas = int(st.get("replicas") or 0)
    reached = current_ready >= intent.desired and replicas <= intent.desired + obs.surge
    moving = (
        previous is not None
        and previous.get("status") == "True"
        and previous.get("reason") in (cond.REASON_SCALE_UP, cond.REASON_SCALE_DOWN)
    )
    if moving and not reached and previous is not None:
        return cond.ConditionUpdate(
            cond.SCALING, True, str(previous.get("reason")), str(previous.get("message") or "")
        )
    if intent.capped_from is not None:
        return cond.ConditionUpdate(
            cond.SCALING,
            False,
            cond.REASON_GPU_CAP,
            f"{intent.desired} replicas, {intent.capped_from} wanted: held at the GPU cap",
        )
    return cond.ConditionUpdate(cond.SCALING, False, intent.reason, intent.message)
