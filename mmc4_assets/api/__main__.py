"""``python -m mmc4_assets.api``: serve the read API, or ``hash-token`` to make a token line."""

from mmc4_assets.api.cli import main

raise SystemExit(main())
