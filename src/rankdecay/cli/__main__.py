"""``python -m rankdecay.cli …``: the same as ``python -m rankdecay …``."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
