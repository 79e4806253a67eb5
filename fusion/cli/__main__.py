"""``python -m fusion.cli``: the ``fusion`` command."""

import sys

from fusion.cli.main import main

sys.exit(main())
