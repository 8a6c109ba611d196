"""spark-submit entry point: `vidspark featurize` with the same arguments (see README)."""

from __future__ import annotations

import sys

from vidspark.cli import main

if __name__ == "__main__":
    sys.exit(main(["featurize", *sys.argv[1:]]))
