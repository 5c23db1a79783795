"""`python -m qgnn` runs the command-line tool."""

from qgnn.cli import main

raise SystemExit(main())
