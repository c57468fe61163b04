"""BatchNorm with statistics over all ranks, for CPU (gloo) runs: torch's SyncBatchNorm needs a GPU."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.nn.functional import all_reduce


class GlooSyncBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d over [N, C] whose training statistics are the sum over ranks (a differentiable all-reduce)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        C = x.shape[1]
        count = torch.full((1,), float(x.shape[0]), dtype=x.dtype, device=x.device)
        stats = all_reduce(torch.cat([x.sum(0), (x * x).sum(0), count]))  # [2C + 1] summed over ranks
        n = stats[-1]
        mean = stats[:C] / n
        var = stats[C : 2 * C] / n - mean * mean  # biased, as used for normalising
        with torch.no_grad():
            self.num_batches_tracked += 1
            self.running_mean.lerp_(mean.detach(), self.momentum)
            self.running_var.lerp_(var.detach() * n / (n - 1), self.momentum)  # unbiased, as torch stores it
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias


def synchronise_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """torch's SyncBatchNorm on GPU; GlooSyncBatchNorm1d (same parameters and buffers) on CPU."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm1d:
            synced = GlooSyncBatchNorm1d(child.num_features, child.eps, child.momentum, child.affine).to(device)
            synced.load_state_dict(child.state_dict())
            setattr(module, name, synced)
        else:
            synchronise_batchnorm(child, device)
    return module
