"""spark-submit entry point: `vidspark run` with the same arguments (see README)."""

from __future__ import annotations

import sys

from vidspark.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
