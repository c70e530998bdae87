"""Many processes: ``torchrun --nproc_per_node N -m stopgrad train ...`` (PyTorch DDP; NCCL on GPUs,
gloo on CPUs). Everything that knows about other processes lives here.

* :func:`init` reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) and joins the
  process group; without it the run is one process and every helper below is the identity.
* :func:`gather` is the one differentiable all-gather: the global batch of an embedding, with
  gradient flowing back to every process's own rows. Methods whose negatives or batch statistics
  span the batch gather their embeddings and compute the loss of the *global* batch on every
  process; each process's gradient then carries W times its share of that loss, and DDP's
  average over the W processes makes it exactly the gradient of the global loss.
* :class:`SyncBatchNorm` normalises with statistics of the global batch on any device.
  torch's own ``nn.SyncBatchNorm`` runs on GPUs only; :func:`convert_sync_batchnorm` uses it on
  CUDA and this one elsewhere (gloo on CPUs).
"""
from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Context:
    """This process's place in the run."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Only the main process writes files, evaluates and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher) as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device_type: str) -> Context:
    """Join the process group of a torchrun launch (NCCL for CUDA, gloo otherwise); a single process
    when not launched. Idempotent."""
    if not launched():
        return Context()
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        timeout = _dt.timedelta(minutes=30)
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            # Keys of this attempt's own. The elastic agent's store outlives a failed attempt
            # (torchrun --max-restarts), and a process of the new attempt could otherwise read the
            # address a dead process of the old one left there, and wait for it forever.
            attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
            world = int(os.environ["WORLD_SIZE"])
            agent = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False,
                                  timeout=timeout)
            dist.init_process_group(backend, store=dist.PrefixStore(f"stopgrad/attempt_{attempt}", agent),
                                    rank=int(os.environ["RANK"]), world_size=world, timeout=timeout)
        else:
            dist.init_process_group(backend, timeout=timeout)
    return Context(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


class _Gather(torch.autograd.Function):
    """All-gather along dim 0; backward sums the gradients of every process and keeps this one's rows."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rows = x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)  # every process's loss may depend on every row
        start = dist.get_rank() * ctx.rows
        return grad[start:start + ctx.rows]


def gather(x: torch.Tensor) -> torch.Tensor:
    """(W * N, ...) rows of every process, in rank order, differentiable; ``x`` itself in one process.

    Every process must pass the same shape. torch's differentiable collectives in
    ``torch.distributed.nn`` are deprecated and its functional ones private, hence this one.
    """
    return _Gather.apply(x) if active() else x


def gather_views(z: torch.Tensor, constant: bool = False) -> torch.Tensor:
    """(V, W * b, ...) from every process's (V, b, ...) views, in one collective (with gradient unless ``constant``)."""
    if not active():
        return z
    v, b = z.shape[:2]
    flat = z.transpose(0, 1).reshape(b, -1)  # (b, V * rest): one row per image
    out = gather_constant(flat) if constant else gather(flat)
    return out.reshape(-1, v, *z.shape[2:]).transpose(0, 1)


def offset(indices: torch.Tensor, per_process: int) -> torch.Tensor:
    """Indices into this process's batch of ``per_process`` rows, as indices into the gathered global batch."""
    return indices + rank() * per_process


@torch.no_grad()
def gather_constant(x: torch.Tensor) -> torch.Tensor:
    """:func:`gather` without gradient (keys for a queue, indices, labels)."""
    if not active():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """The mean of ``x`` over processes (no gradient), ``x`` in one process."""
    if not active():
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x / dist.get_world_size()


def broadcast_object(obj, src: int = 0):
    """``obj`` of process ``src`` on every process."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Every buffer of ``module`` (BatchNorm statistics, pseudo-labels, queues) as process ``src`` has it."""
    if active():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=src)


def barrier() -> None:
    if active():
        dist.barrier()


def any_process(flag: bool) -> bool:
    """True on every process when ``flag`` is True on at least one (a host-side vote)."""
    if not active():
        return flag
    box = [None] * dist.get_world_size()
    dist.all_gather_object(box, bool(flag))
    return any(box)


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training-mode statistics are those of the global batch, on any device.

    Per channel, the sums of x and x^2 and the count are added over processes (through
    :func:`gather`, so the gradient is that of BatchNorm over the concatenated batch); the
    running statistics use the unbiased global variance, as ``nn.BatchNorm`` does. In eval mode,
    or in one process, it is plain BatchNorm.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and active()):
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))  # every axis but the channels
        xf = x.float()
        count = torch.tensor([xf.numel() / xf.shape[1]], device=x.device, dtype=torch.float32)
        local = torch.cat((xf.sum(dims), xf.pow(2).sum(dims), count))  # (2C + 1,)
        total = gather(local[None]).sum(0)
        c = x.shape[1]
        n = total[-1]
        mean = total[:c] / n
        var = total[c:2 * c] / n - mean * mean  # biased, for normalising
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), m)
                self.running_var.lerp_((var.detach() * n / (n - 1)).to(self.running_var.dtype), m)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm layer of ``module`` synchronised over processes: torch's ``nn.SyncBatchNorm`` on
    CUDA, :class:`SyncBatchNorm` elsewhere. Weights and statistics are kept."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, SyncBatchNorm):
        out = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                            module.track_running_stats)
        out.load_state_dict(module.state_dict())
        out.train(module.training)
        for p_new, p_old in zip(out.parameters(), module.parameters()):
            p_new.requires_grad_(p_old.requires_grad)
        return out.to(next(module.buffers(), torch.empty(0)).device)
    for name, child in module.named_children():
        setattr(module, name, convert_sync_batchnorm(child, device))
    return module


def shard(indices: torch.Tensor, context: Context) -> torch.Tensor:
    """This process's part of a global batch of ``indices``: the r-th of W equal consecutive slices."""
    per = len(indices) // context.world
    return indices[context.rank * per:(context.rank + 1) * per]
