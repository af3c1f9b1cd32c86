"""``python -m asgi_attribution``: see :mod:`asgi_attribution.cli`."""

import sys

from .cli import main

sys.exit(main())
