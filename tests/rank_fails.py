"""``lossctl`` for torchrun, with rank 1 failing as the first argument asks: raise, die, hang, or
hang_before_joining (the process group).

python -m torch.distributed.run --nproc-per-node 2 tests/rank_fails.py raise eval PRED GT ...
"""

import os
import sys
import time

import lossctl.engine
from lossctl.cli import main


def failing(*args, **kwargs):
    if MODE == "raise":
        raise RuntimeError("disk on fire")
    if MODE == "die":
        os._exit(7)
    time.sleep(600)


def hanging_before_joining(*args, **kwargs):
    time.sleep(600)


MODE = sys.argv.pop(1)
if os.environ.get("RANK") == "1":
    lossctl.engine.iter_results = failing
    if MODE == "hang_before_joining":  # run_ranks resolves the device before the process group forms
        lossctl.engine.resolve_device = hanging_before_joining
main()
