"""torch.distributed plumbing for the student stage: one object, a no-op on a single process.

`torchrun --nproc-per-node N -m stages.cli.main train-student ...` sets RANK,
WORLD_SIZE and LOCAL_RANK; we then join a process group (NCCL on GPUs, gloo
on CPU), wrap the model in DDP (or FSDP2 with --fsdp), and sum token counts
and losses across ranks. Without those variables everything runs in-process.

    torchrun --nproc-per-node 2 -m stages.cli.main train-student --labels data/labels/demo --steps 20
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as tdist


@dataclass
class DistContext:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "DistContext":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = torch.cuda.is_available()
        device = torch.device(f"cuda:{local}" if cuda else "cpu")
        if cuda:
            torch.cuda.set_device(device)
        if world > 1 and not tdist.is_initialized():
            tdist.init_process_group("nccl" if cuda else "gloo")
        return cls(int(os.environ.get("RANK", "0")), world, device)

    def wrap(self, model: Any, fsdp: bool = False, layers: Any = (),
             find_unused: bool = False) -> Any:
        """DDP across ranks, or FSDP2 (each of `layers` its own unit, `model` the root)."""
        if self.world_size == 1:
            return model
        if fsdp:
            from torch.distributed.fsdp import fully_shard

            for layer in layers:
                fully_shard(layer)
            root = fully_shard(model)
            # FSDP2 initialises lazily on the root's first forward; evaluation calls
            # the decoder before that, so initialise now (no public API for it yet).
            root._get_fsdp_state()._lazy_init()
            return root
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[self.device] if self.device.type == "cuda"
                                       else None, find_unused_parameters=find_unused)

    @contextlib.contextmanager
    def no_sync(self, model: Any, last: bool) -> Iterator[None]:
        """Skip the gradient all-reduce on every micro-batch but the last of a step."""
        if self.world_size > 1 and not last and hasattr(model, "no_sync"):
            with model.no_sync():
                yield
        else:
            yield

    def _sum(self, values: tuple, dtype: torch.dtype) -> list:
        t = torch.tensor(values, dtype=dtype, device=self.device)
        if self.world_size > 1:
            tdist.all_reduce(t)
        return t.tolist()

    def sum_ints(self, *values: int) -> list[int]:
        return [int(v) for v in self._sum(values, torch.int64)]

    def sum_floats(self, *values: float) -> list[float]:
        return self._sum(values, torch.float64)

    @contextlib.contextmanager
    def full_params(self, model: Any) -> Iterator[None]:
        """Root FSDP parameters gathered, for code that calls submodules directly (evaluation)."""
        sharded = hasattr(model, "unshard") and self.world_size > 1
        if sharded:
            model.unshard()
        try:
            yield
        finally:
            if sharded:
                model.reshard()

    def full_state(self, model: Any, optimizer: Any) -> tuple[dict, dict]:
        """(model, optimizer) state dicts, whole and keyed by parameter name, on rank 0.

        A collective under FSDP. One format for one process, DDP and FSDP, so a
        checkpoint written by any of them resumes under any other.
        """
        from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                             get_model_state_dict,
                                                             get_optimizer_state_dict)

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return (get_model_state_dict(model, options=options),
                get_optimizer_state_dict(model, optimizer, options=options))

    def load_full_state(self, model: Any, optimizer: Any, model_state: dict,
                        optimizer_state: dict) -> None:
        """Inverse of `full_state`: every rank loads (FSDP shards it as it loads)."""
        from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                             set_model_state_dict,
                                                             set_optimizer_state_dict)

        options = StateDictOptions(full_state_dict=True)
        set_model_state_dict(model, model_state, options=options)
        set_optimizer_state_dict(model, optimizer, optimizer_state, options=options)

    def barrier(self) -> None:
        if self.world_size > 1:
            tdist.barrier()
