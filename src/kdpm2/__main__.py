"""``python -m kdpm2``: the command line."""

from kdpm2.cli import main

raise SystemExit(main())
