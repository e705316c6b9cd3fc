"""``torchrun ... -m lossctl eval``: each rank evaluates its shard, rank 0 writes the one report.

torchrun (or any launcher that sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``) starts one process per GPU. Each rank computes the same balanced split
(:mod:`lossctl.sharding`) and evaluates shard ``RANK/WORLD_SIZE`` on ``cuda:LOCAL_RANK`` (or the
CPU); rank 0 gathers the shard reports through ``torch.distributed`` and joins them exactly as
``lossctl merge`` does. The process group uses NCCL when the ranks compute on CUDA and gloo
otherwise; the shard reports are host-memory objects and always travel over gloo.

Failures: a rank that raises sends its error to rank 0, which names it in one line; a rank that
does not reach the gather within ``LOSSCTL_TIMEOUT`` seconds (default 3600) is named by gloo's
monitored barrier; a rank that dies makes torchrun stop the others. No rank writes a partial
report: only rank 0 writes, and only after every rank has answered.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from .errors import LossctlError
from .run import EvalRequest, Evaluation, RunInterrupted, run_evaluation
from .sharding import Shard

DEFAULT_TIMEOUT_S = 3600
# How long a rank other than 0 waits for rank 0 at the end: a dead rank 0 makes torchrun stop the
# job anyway, so this only bounds a rank 0 that hangs.
OTHER_RANKS_WAIT = timedelta(days=7)


class RankFailed(LossctlError):
    """A rank could not evaluate its shard, or did not answer: named in one line by rank 0."""


@dataclass(frozen=True)
class Launch:
    """This process's place in a torchrun job."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def shard(self) -> Shard:
        return Shard(self.rank, self.world_size)


def from_environment(environ: dict[str, str] | None = None) -> Launch | None:
    """The torchrun job this process belongs to, or None when it runs alone (``WORLD_SIZE`` unset or 1)."""
    environ = os.environ if environ is None else environ
    if "RANK" not in environ:
        return None
    try:
        launch = Launch(
            int(environ["RANK"]), int(environ.get("WORLD_SIZE", "1")), int(environ.get("LOCAL_RANK", "0"))
        )
    except ValueError:
        raise LossctlError(
            "RANK, WORLD_SIZE and LOCAL_RANK must be integers (as torchrun sets them); got "
            + ", ".join(f"{key}={environ.get(key)!r}" for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
        ) from None
    return launch if launch.world_size > 1 else None


def timeout() -> timedelta:
    text = os.environ.get("LOSSCTL_TIMEOUT", str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(text)
    except ValueError:
        raise LossctlError(f"LOSSCTL_TIMEOUT must be a number of seconds; got {text!r}") from None
    if seconds <= 0:
        raise LossctlError(f"LOSSCTL_TIMEOUT must be positive; got {text!r}")
    return timedelta(seconds=seconds)


def rank_device(spec: str, local_rank: int) -> str:
    """``auto`` and ``cuda`` become this rank's GPU, ``cuda:LOCAL_RANK``; other devices are kept."""
    import torch

    if spec == "cuda" or (spec == "auto" and torch.cuda.is_available()):
        return f"cuda:{local_rank}"
    return spec


def run_ranks(request: EvalRequest, launch: Launch, on_start=None) -> Evaluation | None:
    """Evaluate this rank's shard; on rank 0 return the whole run's evaluation, elsewhere None."""
    import torch
    import torch.distributed as dist

    from .engine import resolve_device

    limit = timeout()
    request = replace(request, device=rank_device(request.device, launch.local_rank))
    device = resolve_device(request.device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        dist.init_process_group(backend, rank=launch.rank, world_size=launch.world_size, timeout=limit)
    except ValueError as error:  # no MASTER_ADDR or MASTER_PORT: RANK and WORLD_SIZE set by hand
        raise RankFailed(
            f"cannot start the ranks' process group: {_first_line(error)} (torchrun sets MASTER_ADDR and "
            "MASTER_PORT with RANK and WORLD_SIZE)"
        ) from None
    except RuntimeError as error:  # torch's DistStoreError: a rank never joined
        raise RankFailed(
            f"not all {launch.world_size} ranks joined within {limit.total_seconds():g} s (one hung or died "
            f"while starting; LOSSCTL_TIMEOUT sets the wait): {_first_line(error)}"
        ) from None
    try:
        # Rank 0 names the ranks that do not arrive within the limit; the others wait for rank 0
        # however long its own share takes (a rank timing out first made torchrun blame it). A gloo
        # group's waits are bounded by its own timeout, so each rank's group has the one it needs.
        wait = limit if launch.rank == 0 else max(limit, OTHER_RANKS_WAIT)
        objects = dist.new_group(backend="gloo", timeout=wait)
        answer = _evaluate_share(request, launch, on_start if launch.rank == 0 else None)
        try:
            dist.monitored_barrier(group=objects, timeout=wait, wait_all_ranks=True)
        except RuntimeError as error:
            raise RankFailed(_unfinished(error, launch.world_size, limit)) from None
        answers: list[Any] | None = [None] * launch.world_size if launch.rank == 0 else None
        dist.gather_object(answer, answers, dst=0, group=objects)
    finally:
        dist.destroy_process_group()
    if answers is None:
        return None
    return _join(answers, launch.world_size)


def _evaluate_share(request: EvalRequest, launch: Launch, on_start) -> dict[str, Any]:
    """This rank's shard report as JSON text, or the error that stopped it."""
    from . import report

    try:
        evaluation = run_evaluation(request, on_start, launch.shard)
    except RunInterrupted:
        return {"error": "interrupted"}
    except Exception as error:  # every rank must reach the gather, so errors travel as answers
        reason = str(error) if isinstance(error, LossctlError) else f"{type(error).__name__}: {error}"
        return {"error": reason}
    return {"report": report.to_json(evaluation.frame, evaluation.summary, evaluation.info)}


def _join(answers: list[dict[str, Any]], world_size: int) -> Evaluation:
    from .merge import merge_reports, shard_report

    failed = [(rank, answer["error"]) for rank, answer in enumerate(answers) if "error" in answer]
    if failed:
        rank, reason = failed[0]
        others = f" (and rank{'s' if len(failed) > 2 else ''} {', '.join(str(r) for r, _ in failed[1:])})"
        raise RankFailed(
            f"rank {rank} of {world_size} failed{others if len(failed) > 1 else ''}: {_first_line(reason)}"
        )
    reports = [  # each text is dropped once parsed: rank 0 holds every row of the run
        shard_report(json.loads(answer.pop("report")), f"rank {rank}") for rank, answer in enumerate(answers)
    ]
    return merge_reports(reports)


def _unfinished(error: RuntimeError, world_size: int, limit: timedelta) -> str:
    """Gloo's "Ranks 1, 3 failed to pass monitoredBarrier" as a sentence about lossctl's ranks."""
    found = re.search(r"Ranks? ([\d, ]+) failed to pass", str(error))
    ranks = found.group(1).strip().rstrip(",") if found else "?"
    plural = "s" if "," in ranks else ""
    return (
        f"rank{plural} {ranks} of {world_size} did not finish within {limit.total_seconds():g} s of rank 0 "
        f"(hung, or far slower; LOSSCTL_TIMEOUT sets the wait): {_first_line(error)}"
    )


def _first_line(text: object) -> str:
    lines = str(text).strip().splitlines()
    return lines[0] if lines else type(text).__name__
