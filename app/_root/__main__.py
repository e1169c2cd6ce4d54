"""``python -m rtxrelay``: the same command as ``rtxrelay``."""

import sys

from rtxrelay.app.cli import main

sys.exit(main())
