"""Count one user's requests to the local control plane's kube-apiserver, by verb and resource, from its
audit log (issue 16's measuring command).

Start the control plane with the audit log on (`GREENSERVE_AUDIT=1 tests/harness/cluster.sh up`; policy:
tests/harness/audit-policy.yaml, one Metadata line per completed request), then

    python tests/harness/api_requests.py --user system:serviceaccount:NS:NAME --window 60

reads the requests that complete during the next 60 s and prints a per-verb and a per-verb-and-resource
table with rates. tests/harness/scale_bench.py uses the same functions around its idle and busy phases.
A watch is counted when it ends (kopf re-opens its watches periodically), so a window shorter than the
watch timeout may miss watches that stay open across it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path


def audit_log_path(cluster: str | None = None) -> Path:
    """Where kwokctl's binary runtime has kube-apiserver write the audit log of cluster `cluster`."""
    name = cluster or os.environ.get("GREENSERVE_CLUSTER", "greenserve")
    root = Path(os.environ.get("KWOK_WORKDIR", Path.home() / ".kwok"))
    return root / "clusters" / name / "logs" / "audit.log"


@dataclass
class Window:
    """Requests counted between two offsets of the audit log."""

    seconds: float
    by_verb: Counter[str] = field(default_factory=Counter)
    by_resource: Counter[tuple[str, str]] = field(default_factory=Counter)
    all_users: int = 0

    @property
    def total(self) -> int:
        return sum(self.by_verb.values())


def end_offset(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _resource(ref: dict[str, str]) -> str:
    res = ref.get("resource", "")
    if ref.get("subresource"):
        res += "/" + ref["subresource"]
    group = ref.get("apiGroup", "")
    return f"{res}.{group}" if group else res


def _verb(event: dict[str, object]) -> str:
    # Server-side apply is a PATCH with the apply content type; the audit log has no content type, but
    # the field manager's `fieldManager` parameter is in the URI.
    verb = str(event.get("verb", ""))
    uri = str(event.get("requestURI", ""))
    if verb == "patch" and "fieldManager=" in uri and "force=" in uri:
        return "apply"
    return verb


def count(path: Path, start: int, end: int, user: str | None, seconds: float) -> Window:
    """Requests by `user` (None: by anyone) in the audit log between byte offsets `start` and `end`."""
    out = Window(seconds)
    if end < start:
        # kube-apiserver rotated the log (at 100 MB) during the window: the rest of the newest rotated
        # file, then the new one from its start.
        rotated = sorted(path.parent.glob(f"{path.stem}-*{path.suffix}"), key=lambda q: q.stat().st_mtime)
        data = b""
        if rotated:
            with rotated[-1].open("rb") as f:
                f.seek(start)
                data = f.read()
        with path.open("rb") as f:
            data += f.read(end)
    else:
        with path.open("rb") as f:
            f.seek(start)
            data = f.read(max(0, end - start))
    for raw in data.splitlines():
        try:
            event = json.loads(raw)
        except ValueError:
            continue  # a line cut at the window's end
        if event.get("stage") != "ResponseComplete":
            continue
        out.all_users += 1
        if user is not None and (event.get("user") or {}).get("username") != user:
            continue
        verb = _verb(event)
        out.by_verb[verb] += 1
        out.by_resource[(verb, _resource(event.get("objectRef") or {}))] += 1
    return out


def measure(path: Path, user: str, seconds: float) -> Window:
    start = end_offset(path)
    t0 = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - t0
    return count(path, start, end_offset(path), user, elapsed)


def table(w: Window, title: str) -> str:
    lines = [
        f"{title}: {w.total} requests in {w.seconds:.0f} s = {w.total / w.seconds:.2f}/s "
        f"(all users: {w.all_users / w.seconds:.2f}/s)",
        f"  {'verb':<8} {'requests':>9} {'per s':>8}",
    ]
    for verb, n in w.by_verb.most_common():
        lines.append(f"  {verb:<8} {n:>9} {n / w.seconds:>8.2f}")
    lines.append(f"  {'verb':<8} {'resource':<40} {'requests':>9} {'per s':>8}")
    for (verb, res), n in w.by_resource.most_common():
        lines.append(f"  {verb:<8} {res:<40} {n:>9} {n / w.seconds:>8.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--user", required=True, help="e.g. system:serviceaccount:NS:NAME")
    p.add_argument("--window", type=float, default=60.0, help="seconds to count")
    p.add_argument("--audit-log", type=Path, default=None, help="default: the kwokctl cluster's audit.log")
    args = p.parse_args(argv)
    path = args.audit_log or audit_log_path()
    if not path.exists():
        print(f"{path} missing: start the cluster with GREENSERVE_AUDIT=1", file=sys.stderr)
        return 2
    print(table(measure(path, args.user, args.window), args.user))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
