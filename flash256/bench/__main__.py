"""``python -m flash256.bench``: see ``flash256.bench.cli``."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
