"""The log check every cluster tier uses for the operator being refused (tests/support/kube.py)."""

from __future__ import annotations

from support.kube import rbac_denials, refusals

CLEAN = (
    "[2026-12-03 15:59:26,403] kopf.objects [INFO ] [models/resnet] Handler 'reconcile' succeeded.\n"
    "[2026-12-03 15:59:27,012] greenserve [INFO ] scaled resnet to 2 (ScaleUp)\n"
)


def test_a_log_timestamps_milliseconds_are_not_a_refusal() -> None:
    # '...26,403' is the time, not a status: the bare-403 check this replaced failed a clean run on it.
    assert refusals(CLEAN) == []


def test_refusals_in_words_are_found_and_debug_quotes_are_not() -> None:
    rbac = (
        "[2026-12-03 16:00:01,118] greenserve [ERROR] ApiError 403 Forbidden: pods is forbidden: User "
        '"system:serviceaccount:gs:gs-operator" cannot list resource "pods" in API group ""\n'
    )
    admission = "[2026-12-03 16:00:02,500] greenserve [ERROR] denied by ValidatingAdmissionPolicy gs-guard\n"
    debug = "[2026-12-03 16:00:03,000] kopf.objects [DEBUG ] Patching with: {'lastError': '403 Forbidden'}\n"
    terminating = (
        "[2026-12-03 16:00:04,000] greenserve [ERROR] 403 Forbidden: unable to create new content in "
        "namespace t1 because it is being terminated\n"
    )
    logs = CLEAN + rbac + admission + debug + terminating
    assert refusals(logs) == [rbac.rstrip("\n"), admission.rstrip("\n")]
    assert rbac_denials(logs) == [rbac.rstrip("\n")]
