import sys

from pybox.cli import main

sys.exit(main())
