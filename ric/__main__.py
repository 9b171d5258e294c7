"""``python -m ric`` is the ``ric`` command."""

from ric.cli import main

raise SystemExit(main())
