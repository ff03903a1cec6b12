"""``python -m gso_analytics``: the same CLI as the ``gso-analytics`` console script."""

import sys

from .cli import main

sys.exit(main())
