"""``lossctl`` for torchrun, with rank 1 failing as the first argument asks: raise, die, hang, or
hang_before_joining (the process group); refuse (an error of its own, before its share); elsewhere
(rank 1 runs in another working folder, as on another machine); or rank 0 slow (5 s late).

python -m torch.distributed.run --nproc-per-node 2 tests/rank_fails.py raise eval PRED GT ...
"""

import os
import sys
import tempfile
import time

import lossctl.distributed
import lossctl.engine
from lossctl.cli import main
from lossctl.errors import LossctlError


def failing(*args, **kwargs):
    if MODE == "raise":
        raise RuntimeError("disk on fire")
    if MODE == "die":
        os._exit(7)
    time.sleep(600)


def hanging_before_joining(*args, **kwargs):
    time.sleep(600)


def late(*args, **kwargs):
    time.sleep(5)
    return real_iter_results(*args, **kwargs)


def refusing():
    raise LossctlError("LOSSCTL_TIMEOUT must be a number of seconds; got 'soon'")


MODE = sys.argv.pop(1)
real_iter_results = lossctl.engine.iter_results
if MODE == "slow_rank_0":
    if os.environ.get("RANK") == "0":
        lossctl.engine.iter_results = late
elif MODE == "elsewhere":
    if os.environ.get("RANK") == "1":
        os.chdir(tempfile.mkdtemp())  # relative output paths name nothing here
elif MODE == "refuse":
    if os.environ.get("RANK") == "1":
        lossctl.distributed.timeout = refusing
elif os.environ.get("RANK") == "1":
    lossctl.engine.iter_results = failing
    if MODE == "hang_before_joining":  # run_ranks resolves the device before the process group forms
        lossctl.engine.resolve_device = hanging_before_joining
main()
