"""``python -m rtxrelay.app``: the same command as ``rtxrelay``."""

import sys

from .cli import main

sys.exit(main())
