"""`python -m rprocd.sim`: the `rprocd-sim` command."""

from rprocd.sim.cli import main

raise SystemExit(main())
