"""The `greenserve` command: run the operator, render the CRD, simulate and benchmark policies."""

from __future__ import annotations

import argparse
import sys


def _run_operator(args: argparse.Namespace) -> int:
    from greenserve.cluster import lean_client

    lean_client.install()  # before kopf and the credentials import the Kubernetes client
    import kopf  # imported here so `greenserve simulate` does not need kopf's event loop setup

    import greenserve.handlers  # noqa: F401  (registers the handlers)

    namespaces = args.namespace or []
    kopf.configure(verbose=args.verbose)
    kopf.run(
        standalone=args.standalone,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=args.liveness,
        peering_name=None if args.standalone else args.peering,
        priority=args.priority,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="greenserve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the operator (kopf)")
    run.add_argument("--standalone", action="store_true", help="no peering: assume one operator")
    run.add_argument("--namespace", "-n", action="append", help="watch these namespaces (default: all)")
    run.add_argument("--liveness", default=None, help="liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    run.add_argument("--peering", default="greenserve", help="kopf peering name (leader election)")
    run.add_argument("--priority", type=int, default=0, help="kopf peering priority")
    run.add_argument("--verbose", action="store_true")
    sub.add_parser(
        "crd", help="render the CRD from the API types (see greenserve.api.crdgen)", add_help=False
    )
    sub.add_parser("simulate", help="run the simulator", add_help=False)
    sub.add_parser(
        "activator", help="run the scale-to-zero activator (see greenserve.activator)", add_help=False
    )
    sub.add_parser("bench", help="benchmark greenserve's policy against the baselines", add_help=False)
    if argv and argv[0] == "activator":
        from greenserve.activator import kube as activator

        return activator.main(argv[1:])
    if argv and argv[0] in {"crd", "simulate", "bench"}:
        if argv[0] == "crd":
            from greenserve.api import crdgen

            return crdgen.main(argv[1:])
        from greenserve.simulator import cli as sim_cli

        result: int = sim_cli.main(argv)
        return result
    args = parser.parse_args(argv)
    return _run_operator(args)


if __name__ == "__main__":
    raise SystemExit(main())
