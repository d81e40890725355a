"""Denoisers on a real acquired scan never used in training: ``python scripts/real_scan.py -h``
(the logic is ``mriae.compare.real_scan``)."""

import sys

from mriae.compare.real_scan import main

sys.exit(main())
