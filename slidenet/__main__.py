"""`python -m slidenet` is the same as the `slidenet` command."""
from slidenet.cli import main

raise SystemExit(main())
