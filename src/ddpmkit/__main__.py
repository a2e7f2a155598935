"""``python -m ddpmkit``: the same as the ``ddpmkit`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
