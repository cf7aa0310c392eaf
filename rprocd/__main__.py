"""`python -m rprocd`."""

from rprocd.daemon import main

raise SystemExit(main())
