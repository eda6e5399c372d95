"""``affbench ablate`` whose training sends the process a real SIGTERM at a chosen step (as a
cluster's time limit would), and that logs every training step it runs.

Usage: python tests/ablate_with_sigterm.py STEPS_LOG KILL_AT_STEP|-1 ablate GRID.yaml ...
"""

import os
import signal
import sys

from affbench.cli import main
from lightning_modules.module import AffectModule

steps_log, kill_at = sys.argv[1], int(sys.argv[2])
training_step = AffectModule.training_step


def logged_step(self, batch, batch_idx):
    with open(steps_log, "a") as f:
        f.write(f"{self.global_step}\n")
    if self.global_step == kill_at:
        os.kill(os.getpid(), signal.SIGTERM)  # handled at the end of this batch
    return training_step(self, batch, batch_idx)


AffectModule.training_step = logged_step
main(sys.argv[3:])
