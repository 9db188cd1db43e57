"""Rank awareness. Everything here is a no-op in a single process, so code written against it runs
unchanged under `torchrun` (data-parallel: each rank collects and samples its own data, gradients
are averaged, rank 0 logs and checkpoints)."""

from __future__ import annotations

import os


def is_initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    if is_initialized():
        import torch.distributed as dist

        return dist.get_rank()
    return int(os.environ.get("RANK", 0))


def world_size() -> int:
    if is_initialized():
        import torch.distributed as dist

        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", 1))


def is_main_process() -> bool:
    return rank() == 0


def init_from_environment(backend: str | None = None) -> bool:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); returns whether it did."""
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1 or is_initialized():
        return is_initialized()
    import torch
    import torch.distributed as dist

    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    return True


def average_gradients(module) -> None:
    """All-reduce and average the gradients of `module` across ranks (no-op in one process)."""
    if not is_initialized():
        return
    import torch
    import torch.distributed as dist

    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def any_rank(flag: bool) -> bool:
    """Whether `flag` is true on any rank (itself in one process), so that ranks decide together."""
    if not is_initialized():
        return flag
    import torch
    import torch.distributed as dist

    value = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def broadcast_module(module) -> None:
    """Copy rank 0's parameters and buffers to every rank, so that all start identical."""
    if not is_initialized():
        return
    import torch.distributed as dist

    for tensor in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(tensor.data, src=0)


def barrier() -> None:
    if is_initialized():
        import torch.distributed as dist

        dist.barrier()
