import sys

from pyrovae.app.cli import main

sys.exit(main())
