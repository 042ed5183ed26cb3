"""``python -m matensemble.worker <task-dir>``: run one Python call (see ``functions.worker``)."""

from __future__ import annotations

import sys

from matensemble.functions.worker import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
