"""``python -m imagesync`` and the ``imagesync`` command (``run``)."""

import sys

EXIT_SIGINT = 130  # as errors.EXIT_SIGINT, which is not imported yet when this is needed


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
