"""``python -m vidspark VERB ...``: the ``vidspark`` console script without its installed wrapper."""

from vidspark.cli import entrypoint

if __name__ == "__main__":
    entrypoint()
