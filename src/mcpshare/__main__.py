"""``python -m mcpshare ...``: the same dispatcher as the ``mcpshare`` console script (see mcpshare.entry)."""

import sys

from mcpshare.entry import main

sys.exit(main())
