"""``python -m airscene``: the same as the ``airscene`` command."""

from airscene.cli import main

raise SystemExit(main())
