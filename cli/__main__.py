"""`python -m sparq_sim.cli ...`: the same as the `sparq-sim` command."""

import sys

from . import main

sys.exit(main())
