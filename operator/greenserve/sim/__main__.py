"""`python -m greenserve.sim simulate|bench ...`"""

from __future__ import annotations

import sys

from greenserve.sim.cli import main

sys.exit(main(sys.argv[1:]))
