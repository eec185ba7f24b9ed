"""`irpo-train` as torchrun runs it, for tests/test_multiprocess.py.

The one addition: after each training phase every process writes its own copy of the LM's
parameters to $IRPO_TEST_PARAMS/PHASE-rankR.pt, so the test can check that the processes agree
(the run folder holds the main process's model only).
"""

import os
import sys
from pathlib import Path

import torch

from irpo_train import trainer as trainer_module

_train = trainer_module.DPONLLTrainer.train


def train_and_dump(self, *args, **kwargs):
    result = _train(self, *args, **kwargs)
    phase = Path(self.args.output_dir).parent.name  # models/M_T.work/PHASE/checkpoints
    params = {name: p.detach().clone() for name, p in self._language_model().named_parameters()}
    torch.save(params, Path(os.environ["IRPO_TEST_PARAMS"]) / f"{phase}-rank{os.environ.get('RANK', '0')}.pt")
    return result


trainer_module.DPONLLTrainer.train = train_and_dump

from irpo_train.cli import main  # noqa: E402  (after the patch, as the command would import it)

sys.exit(main())
