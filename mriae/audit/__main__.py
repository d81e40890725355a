"""``python -m mriae.audit BUNDLE_DIR``: see mriae.audit."""

import sys

from . import main

sys.exit(main())
