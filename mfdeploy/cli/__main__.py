"""`python -m mfdeploy.cli`: the same as the `mfdeploy` command."""

from mfdeploy.cli import main

main()
