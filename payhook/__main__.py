"""``python -m payhook …``: the same as the ``payhook`` command."""

import sys

from payhook.cli import main

sys.exit(main())
