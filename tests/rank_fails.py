"""``lossctl`` for torchrun, with rank 1 failing as the first argument asks: raise, die or hang.

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


MODE = sys.argv.pop(1)
if os.environ.get("RANK") == "1":
    lossctl.engine.iter_results = failing
main()
