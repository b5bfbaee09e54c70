"""``python -m bench`` is the same as the ``invbench`` console script."""

from bench.cli import main

raise SystemExit(main())
