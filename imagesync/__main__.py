import sys

from imagesync.cli import main

sys.exit(main())
