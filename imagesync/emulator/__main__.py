"""``python -m imagesync.emulator [options]``: the emulator without the main CLI."""

from __future__ import annotations

import argparse
import sys

from . import add_arguments, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m imagesync.emulator",
        description="Serve a local ENS + OSS emulator on 127.0.0.1 for demos and tests.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
