"""`mfdeploy tune`: search the compression space on the user's backend and data (see `mfdeploy.tuning.run`)."""

from mfdeploy.tuning.records import Constraints
from mfdeploy.tuning.run import TuneConfig, TuneResult, pick_trial, run_tune

__all__ = ["Constraints", "TuneConfig", "TuneResult", "pick_trial", "run_tune"]
