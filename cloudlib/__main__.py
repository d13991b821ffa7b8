"""``python -m cloudlib``: the command line (:mod:`cloudlib.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
