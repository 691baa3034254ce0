"""``python -m medistill``."""

import sys

from medistill.cli import main

sys.exit(main())
