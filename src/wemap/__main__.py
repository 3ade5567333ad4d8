"""``python -m wemap``: the same as the ``wemap`` command."""

from wemap.cli import main

raise SystemExit(main())
