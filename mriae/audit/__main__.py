"""``python -m mriae.audit BUNDLE_DIR``: see mriae.audit."""

import sys

from mriae.audit import main

sys.exit(main())
