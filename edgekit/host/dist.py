"""Data-parallel training under torchrun: one process per GPU (or per CPU process), PyTorch's own launcher.

    torchrun --nproc_per_node=8 -m edgekit.cli run --recipe imagenet ...
    torchrun --nnodes=2 --node-rank=0 --rdzv-endpoint=host:29500 --nproc_per_node=8 -m edgekit.cli run ...

`setup(recipe)` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK), joins the process group
(NCCL on GPUs, gloo on the CPU) and picks this process's device. Without torchrun it returns a
single-process `Dist` whose collectives are no-ops, so callers never branch on "distributed or not".
Rank 0 is the writer: it alone writes artifacts, logs and draws progress bars; other ranks wait at
barriers and receive its results through `broadcast_object`.
"""

import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeVar

import torch

from ..errors import EdgekitError

T = TypeVar("T")

# Rank 0 may spend long stretches alone (pruning, export) while the others wait at a barrier;
# the default 10-30 min collective timeouts would kill a healthy ImageNet run.
_TIMEOUT = datetime.timedelta(hours=6)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """`auto` is CUDA when one is visible; asking for CUDA where there is none is a user error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise EdgekitError("train.device is cuda but PyTorch sees no CUDA GPU; set train.device: cpu or auto")
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise EdgekitError("LOCAL_RANK {} but this node has {} CUDA device(s); start at most {} processes "
                               "per node (torchrun --nproc_per_node)".format(local_rank, count, count))
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


@dataclass
class Dist:
    """This process's place in the job. The default is a single process (every collective a no-op)."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: Optional[torch.device] = None   # None: not set up; the training loop resolves train.device
    backend: Optional[str] = None           # "nccl" / "gloo" once a process group is joined
    train: Any = None                       # the recipe's TrainConfig: the training loop's default

    @property
    def is_writer(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None and self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            if self.backend == "nccl":
                torch.distributed.barrier(device_ids=[self.local_rank])
            else:
                torch.distributed.barrier()

    def broadcast_object(self, obj: T, src: int = 0) -> T:
        """`obj` from rank `src` on every rank (pickled; fine for specs, records and state_dicts)."""
        if not self.distributed:
            return obj
        box = [obj if self.rank == src else None]
        torch.distributed.broadcast_object_list(box, src=src, device=self._comm_device())
        return box[0]  # type: ignore[return-value]

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks, in place on this process's device; returns the tensor."""
        if self.distributed:
            torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
        return tensor

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        self.all_reduce_sum(tensor)
        if self.distributed:
            tensor /= self.world_size
        return tensor

    def train_sampler(self, dataset: Any, seed: int) -> Optional[Any]:
        """This rank's shard of `dataset`, reshuffled per epoch by `set_epoch`; None for one process
        (the loader shuffles with its own generator then)."""
        if not self.distributed:
            return None
        from torch.utils.data.distributed import DistributedSampler

        return DistributedSampler(dataset, num_replicas=self.world_size, rank=self.rank, shuffle=True, seed=seed,
                                  drop_last=True)

    def sync_buffers(self, module: torch.nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) on every rank: DDP syncs them at the start
        of each forward, so after the last training step every rank holds its own."""
        if self.distributed:
            for buffer in module.buffers():
                torch.distributed.broadcast(buffer, src=0)

    def on_writer(self, compute: Callable[[], T]) -> T:
        """Rank 0 runs `compute` (and writes what it writes); every rank returns its result."""
        result = compute() if self.is_writer else None
        return self.broadcast_object(result)  # type: ignore[arg-type]

    def cleanup(self) -> None:
        if self.distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        self.backend = None
        _set_current(Dist())

    def _comm_device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")


_CURRENT = Dist()


def _set_current(d: Dist) -> None:
    global _CURRENT
    _CURRENT = d


def current() -> Dist:
    """The `Dist` the last `setup` made (a single process before any): the training loop's default."""
    return _CURRENT


def _env_int(name: str, default: int) -> int:
    """torchrun's variables; one clear line when something else set them to nonsense."""
    text = os.environ.get(name, str(default))
    try:
        return int(text)
    except ValueError:
        raise EdgekitError("{} must be an integer (torchrun sets it), got {!r}; unset it or launch with "
                           "torchrun".format(name, text)) from None


def setup(recipe: Any) -> Dist:
    """Join torchrun's process group when launched by torchrun; a single-process `Dist` otherwise."""
    world_size, rank, local_rank = (_env_int(n, d) for n, d in (("WORLD_SIZE", 1), ("RANK", 0), ("LOCAL_RANK", 0)))
    device = resolve_device(recipe.train.device, local_rank if world_size > 1 else 0)
    d = Dist(rank=rank, world_size=world_size, local_rank=local_rank, device=device, train=recipe.train)
    if world_size > 1:
        if not torch.distributed.is_available():
            raise EdgekitError("WORLD_SIZE is {} but this PyTorch build has no torch.distributed".format(world_size))
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if not torch.distributed.is_initialized():
            kwargs = {"device_id": device} if backend == "nccl" else {}
            torch.distributed.init_process_group(backend=backend, timeout=_TIMEOUT, **kwargs)
        d.backend = backend
    elif device.type == "cuda":
        torch.cuda.set_device(device)
    _set_current(d)
    return d
