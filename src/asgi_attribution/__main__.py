"""``python -m asgi_attribution``: the ``asgi-attribution`` command (see :mod:`._cli`)."""

import sys

from ._cli import main

sys.exit(main())
