"""`python -m greenserve.simulator bench --quick`."""

from greenserve.simulator.cli import main

raise SystemExit(main())
