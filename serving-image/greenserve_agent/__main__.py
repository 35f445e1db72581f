"""``greenserve-agent``: the serving image's entrypoint (see :mod:`greenserve_agent.supervisor`)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys

import prometheus_client

from greenserve_agent.supervisor import Supervisor, parse_args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=os.environ.get("GREENSERVE_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # `_created` series only double the scrape size; the counters' resets are visible without them.
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    cfg = parse_args(sys.argv[1:] if argv is None else argv)
    return asyncio.run(Supervisor(cfg).run())


if __name__ == "__main__":
    raise SystemExit(main())
