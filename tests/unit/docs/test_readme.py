"""The README's metrics reference lists every metric of the shared contract, so the docs cannot drift."""

from __future__ import annotations

import re

from greenserve import contract as k
from support.paths import REPO


def test_every_contract_metric_is_documented() -> None:
    readme = (REPO / "README.md").read_text()
    specs = [v for v in vars(k).values() if isinstance(v, k.MetricSpec)]
    assert len(specs) >= 20  # the contract really was found
    missing = [s.name for s in specs if f"`{s.name}`" not in readme]
    assert missing == []


def test_every_documented_greenserve_metric_exists() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Metrics reference") : readme.index("## Troubleshooting")]
    documented = set(re.findall(r"`(greenserve_[a-z_]+)`", section))
    known = {v.name for v in vars(k).values() if isinstance(v, k.MetricSpec)}
    assert documented - known == set()
