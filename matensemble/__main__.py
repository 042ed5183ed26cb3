"""``python -m matensemble``: the same as the ``matensemble`` command."""

from __future__ import annotations

from matensemble.cli import main

raise SystemExit(main())
