"""`python -m helpers.probe_run ARGS` is `python -m chainforge ARGS` with a trainer callback that
watches the training (helpers.launch starts it, with tests/ on PYTHONPATH):

- $CHAINFORGE_TEST_STEP_LOG: one line per finished optimizer step, the step number;
- $CHAINFORGE_TEST_KILL_AT_STEP: SIGKILL this process when that step ends (after the checkpoints
  of earlier steps are saved; no handler runs, nothing is cleaned up: what the OOM killer leaves);
- $CHAINFORGE_TEST_WEIGHTS_DIR: when training ends, save the weights this rank holds as
  rank<RANK>.pt there (the ranks of a launch must end with the same weights).
"""

from __future__ import annotations

import os
import runpy
import signal
import sys

import transformers.trainer as hf_trainer
from transformers import TrainerCallback


class Probe(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        log = os.environ.get("CHAINFORGE_TEST_STEP_LOG")
        if log:
            with open(log, "a", encoding="utf-8") as f:
                f.write(f"{state.global_step}\n")
        if str(state.global_step) == os.environ.get("CHAINFORGE_TEST_KILL_AT_STEP"):
            os.kill(os.getpid(), signal.SIGKILL)

    def on_train_end(self, args, state, control, model=None, **kw):
        folder = os.environ.get("CHAINFORGE_TEST_WEIGHTS_DIR")
        if folder and model is not None:
            import torch

            weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            torch.save(weights, os.path.join(folder, f"rank{os.environ.get('RANK', '0')}.pt"))


if __name__ == "__main__":
    hf_trainer.DEFAULT_CALLBACKS = hf_trainer.DEFAULT_CALLBACKS + [Probe]
    sys.argv = ["chainforge", *sys.argv[1:]]
    runpy.run_module("chainforge", run_name="__main__")
