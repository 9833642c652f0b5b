"""Entry point: `python3 -m busdctl` and the `busdctl` console script."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
