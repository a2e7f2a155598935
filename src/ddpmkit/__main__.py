"""``python -m ddpmkit`` (and ``accelerate launch -m ddpmkit train ...``): the same as the ``ddpmkit`` command."""

import sys

from .commands import main

if __name__ == "__main__":
    sys.exit(main())
