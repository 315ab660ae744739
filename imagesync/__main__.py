from imagesync.cli import main
import sys
sys.exit(main())
