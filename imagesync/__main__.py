"""``python -m imagesync`` and the ``imagesync`` command (``run``)."""

import sys

from imagesync.errors import EXIT_SIGINT  # standard library only: imports in no time


def run() -> None:
    """Ctrl-C may land in the quarter second of imports, or before main() catches it: one
    sentence and 130 then too, never a traceback."""
    try:
        from imagesync.cli import main

        code = main()
    except KeyboardInterrupt:
        sys.stderr.write("imagesync: interrupted; partial files are kept for the next run\n")
        code = EXIT_SIGINT
    sys.exit(code)


if __name__ == "__main__":
    run()
