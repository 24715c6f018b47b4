"""`python -m tests.train_driver [key=value ...]`: `tandem train` with the test-only toy task
registered, for tests that must run training in a child process (to kill or signal it).

TANDEM_TEST_STEP_SLEEP=<s> sleeps that long after each step from the 2nd on (gives a test
time to act between steps; changes no number the run computes)."""

from __future__ import annotations

import os
import sys
import time

import tests.toy_task  # noqa: F401  (registers toy_letters)
from tandemrl.cli import main
from tandemrl.methods.grpo import GRPO

if __name__ == "__main__":
    pause = float(os.environ.get("TANDEM_TEST_STEP_SLEEP", "0"))
    if pause:
        real_finish = GRPO.finish

        def slow_finish(self, state):
            out = real_finish(self, state)
            if state.step >= 1:
                time.sleep(pause)
            return out

        GRPO.finish = slow_finish
    sys.exit(main(["train", *sys.argv[1:]]))
