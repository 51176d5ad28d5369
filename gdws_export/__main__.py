"""`python -m gdws_export ...`: the same as the `gdws-export` command."""

from gdws_export.cli import main

raise SystemExit(main())
