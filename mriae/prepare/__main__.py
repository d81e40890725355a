"""``python -m mriae.prepare``: see ``mriae.prepare.pipeline``."""

import sys

from mriae.prepare.pipeline import main

sys.exit(main())
