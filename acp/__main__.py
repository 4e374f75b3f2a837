"""``python -m acp`` == ``acp``."""

import sys

from acp.cli import main

sys.exit(main())
