"""``python -m skpadim.cli``: the ``skpadim`` command."""

import sys

from . import main

sys.exit(main())
