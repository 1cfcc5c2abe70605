"""The `mfdeploy` command line: one small module per verb, option groups shared by verbs, rich rendering.

No library logic here: each verb parses its options into the library's
typed configs and calls the library (or `mfdeploy.api`), then renders the result.
"""

from mfdeploy.cli.app import main
from mfdeploy.cli.options import PRUNE_OPTIONS
from mfdeploy.cli.root import app
from mfdeploy.cli.verbs import VERBS  # registers every verb on `app`

__all__ = ["PRUNE_OPTIONS", "VERBS", "app", "main"]
