"""Batch norm with the statistics of the global batch, on any device and any backend.

``torch.nn.SyncBatchNorm`` runs on CUDA only (its kernels are CUDA kernels, its collectives
assume NCCL), so with DDP over gloo on the CPU every rank used to normalise with the statistics
of its own share of the batch: 2 processes x 32 rows then train a different network from
1 process x 64 rows. :class:`SyncBatchNorm` sums per-channel statistics over the ranks with plain
``torch.distributed`` collectives, which every backend has, so both train the same network.

The statistics are computed in two passes, each one all-reduce: first the sum and count (the
global mean), then the sum of squared deviations from that global mean (the variance). The
one-pass ``E[x^2] - E[x]^2`` needs a single collective but cancels catastrophically in float32
when the mean is large against the spread, and would not match single-process batch norm to
1e-6. The all-reduces take part in autograd (the gradient of a sum over ranks is the sum of the
ranks' gradients), so every rank's inputs get the gradient of the whole batch's statistics.

Without a process group, or in a world of one, the layer is exactly ``nn.BatchNorm{1,2,3}d``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.lazy import LazyModuleMixin

__all__ = ["SyncBatchNorm", "convert_sync_batchnorm"]


class _AllReduceSum(torch.autograd.Function):
    """Sum a tensor over the ranks of ``group``, differentiably.

    Each rank's output is the sum of every rank's input, so the gradient reaching one rank's
    input is the sum of the gradients at every rank's output: the backward is the same
    all-reduce. This is what ``torch.distributed.nn.functional.all_reduce`` does; that function
    is deprecated in recent torch (it warns with a FutureWarning) in favour of a private module
    whose autograd support is newer than the oldest torch this project supports.
    """

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
        ctx.group = group
        # A copy: all_reduce works in place, and the input may be needed by autograd.
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _AllReduceSum.apply(grad, ctx.group), None


def _all_reduce_sum(tensor: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    out: torch.Tensor = _AllReduceSum.apply(tensor, group)
    return out


class SyncBatchNorm(_BatchNorm):
    """Batch norm over the batch of all ranks together, on any device and backend (gloo too).

    In training mode the mean and variance of every channel are those of the global batch (all
    dimensions but the channel dimension 1, over every rank of ``process_group``; the world's
    group when ``None``), and the running statistics move towards them as ``nn.BatchNorm``'s
    do. Every rank must call ``forward`` together in training mode, also one whose share of the
    batch is empty. In eval mode nothing is exchanged: the running statistics are used, or, when
    they are not tracked, those of the local batch (as ``torch.nn.SyncBatchNorm`` does), so one
    rank may evaluate alone.

    Inputs are ``(N, C)``, ``(N, C, L)``, ``(N, C, H, W)`` or ``(N, C, D, H, W)``; build it from
    an existing network with :func:`convert_sync_batchnorm`.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: dist.ProcessGroup | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype
        )
        self.process_group = process_group

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def _world_size(self) -> int:
        if not (dist.is_available() and dist.is_initialized()):
            return 1
        return dist.get_world_size(self.process_group)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Normalise ``input`` with the global batch's statistics (training) or running ones."""
        self._check_input_dim(input)
        # The same bookkeeping as _BatchNorm.forward, so that both paths below count batches and
        # weigh the running averages identically (momentum None: a cumulative average).
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        batch_stats = self.training or (self.running_mean is None and self.running_var is None)

        # Only training synchronises: in eval mode one rank may run alone (rank 0 evaluates the
        # test split by itself), and a collective would then wait for the others forever.
        if self.training and self._world_size() > 1:
            return self._global_batch_norm(input, factor)
        track = not self.training or self.track_running_stats
        return F.batch_norm(
            input,
            self.running_mean if track else None,
            self.running_var if track else None,
            self.weight,
            self.bias,
            batch_stats,
            factor,
            self.eps,
        )

    def _global_batch_norm(self, input: torch.Tensor, factor: float) -> torch.Tensor:
        # float32 statistics for half-precision inputs: their sums over a batch lose too much.
        dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
        x = input.to(dtype)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        channels = x.shape[1]
        local_count = x.numel() // channels if channels else 0

        # The count travels with the sums: shares may differ between ranks (and may be empty).
        # In float32 it is exact up to 2**24 values per channel; past that its rounding is below
        # that of the float32 sums it divides.
        count_column = torch.full((1,), float(local_count), dtype=dtype, device=x.device)
        totals = _all_reduce_sum(torch.cat([x.sum(dims), count_column]), self.process_group)
        count = int(totals[-1].item())
        if count < 2:
            # nn.BatchNorm's own error for one value per channel (its variance is undefined). The
            # count is global, so every rank raises here and none is left waiting in a collective.
            raise ValueError(
                "Expected more than 1 value per channel when training, "
                f"got {count} over all ranks (input size {list(input.shape)} on this one)"
            )
        mean = totals[:-1] / count
        centred = x - mean.view(shape)
        squares = _all_reduce_sum(centred.square().sum(dims), self.process_group)
        var = squares / count

        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.weight is not None and self.bias is not None:
            out = out * self.weight.to(dtype).view(shape) + self.bias.to(dtype).view(shape)

        if self.track_running_stats and self.running_mean is not None:
            assert self.running_var is not None
            with torch.no_grad():
                # Running variance is unbiased (n / (n - 1)), as nn.BatchNorm keeps it.
                unbiased = squares / (count - 1)
                self.running_mean.mul_(1.0 - factor).add_(
                    mean.to(self.running_mean.dtype), alpha=factor
                )
                self.running_var.mul_(1.0 - factor).add_(
                    unbiased.to(self.running_var.dtype), alpha=factor
                )
        return out.to(input.dtype)


def convert_sync_batchnorm(
    module: torch.nn.Module, process_group: dist.ProcessGroup | None = None
) -> torch.nn.Module:
    """Replace every batch norm layer in ``module`` by a :class:`SyncBatchNorm`, recursively.

    Like ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``: each replacement takes over the
    layer's parameters and buffers themselves (not copies, so an optimizer built on the network
    before still updates them, on the same device and in the same dtype), its hyperparameters,
    ``requires_grad`` and training flag. Returns ``module``, or its replacement when ``module``
    is itself a batch norm layer. Layers already converted are left as they are.
    """
    converted = module
    if isinstance(module, _BatchNorm) and not isinstance(module, SyncBatchNorm):
        if isinstance(module, LazyModuleMixin) and module.has_uninitialized_params():
            raise ValueError(
                f"{type(module).__name__} has not seen an input yet, so it has no parameters to "
                "convert; run one forward pass first"
            )
        converted = SyncBatchNorm(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
            process_group,
        )
        if module.affine:
            # The same Parameter objects: identity, requires_grad, device and dtype carry over.
            converted.weight = module.weight
            converted.bias = module.bias
        # Buffers are replaced too (None when running statistics are not tracked).
        converted.running_mean = module.running_mean
        converted.running_var = module.running_var
        converted.num_batches_tracked = module.num_batches_tracked
        converted.train(module.training)
        if hasattr(module, "qconfig"):
            converted.qconfig = module.qconfig
    for name, child in module.named_children():
        converted.add_module(name, convert_sync_batchnorm(child, process_group))
    return converted
