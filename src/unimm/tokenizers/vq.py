"""Vector quantisation with an EMA codebook (VQ-VAE, van den Oord et al. 2017, appendix A.1;
EMA updates as in VQ-VAE-2 / SoundStream).

Notable choices:
- EMA codebook, not a gradient-trained one: each code moves to the running mean of the latents
  assigned to it (online k-means), so the codebook needs no learning rate of its own and keeps
  up with a fast-moving encoder. Gradients reach the encoder through the straight-through
  estimator plus the commitment loss ||z - sg(q)||^2.
- Initialised from data: k-means++ seeding (Arthur & Vassilvitskii 2007) on a batch of encoder
  outputs, so codes start on the data and spread over it (duplicates, e.g. the many identical
  background patches, get probability 0 after their first pick).
- Dead-code restarts (Dhariwal et al. 2020, Jukebox; Zeghidour et al. 2021): codes whose EMA
  usage falls below a threshold are moved onto recent encoder outputs, drawn with probability
  proportional to their quantisation error. Uniform draws would mostly land on the background
  (85 % of ShapesWorld patches); error-weighted draws go where the codebook is missing patterns.
  Without restarts the 32x32 tokenizer used 225 of 1536 codes and the judge read 81 % of
  reconstructions; with them, 1426 codes and 100 %.
- Distances and EMA statistics are kept in float32 even under bf16 autocast: an argmin over
  1000+ codes is sensitive to rounding.

Legend: m = latent vectors (flattened), k = codebook size, d = latent dim.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class VectorQuantizer(nn.Module):
    def __init__(self, codebook_size: int, dim: int, decay: float = 0.99, eps: float = 1e-5,
                 unit: bool = False):
        super().__init__()
        self.codebook_size, self.dim, self.decay, self.eps = codebook_size, dim, decay, eps
        self.unit = unit          # keep codes on the unit sphere (for l2-normalised latents)
        self.register_buffer("codebook", torch.randn(codebook_size, dim) * 0.1)   # (k, d)
        self.register_buffer("ema_count", torch.ones(codebook_size))               # (k,)
        self.register_buffer("ema_sum", self.codebook.clone())                     # (k, d)
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        # Assignments since the last restart check (training bookkeeping, not saved).
        self.register_buffer("window_count", torch.zeros(codebook_size), persistent=False)

    # -- lookups -------------------------------------------------------------------------------
    def distances(self, z: torch.Tensor) -> torch.Tensor:
        """Squared distances (m, k) from latents (m, d) to every code."""
        z = z.float()
        cb = self.codebook
        return (z * z).sum(1, keepdim=True) - 2.0 * z @ cb.T + (cb * cb).sum(1)[None, :]

    def nearest_with_error(self, z: torch.Tensor, chunk: int = 8192):
        """(squared distance (m,), code index (m,)) of the nearest code for each latent (m, d);
        chunked so the (m, k) distance matrix never exists at once."""
        if z.shape[0] == 0:
            return z.new_zeros(0, dtype=torch.float32), torch.zeros(0, dtype=torch.long)
        parts = [self.distances(part).min(1) for part in z.split(chunk)]
        return torch.cat([p.values for p in parts]), torch.cat([p.indices for p in parts])

    def nearest(self, z: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
        """Code index (m,) of the nearest code for each latent (m, d)."""
        return self.nearest_with_error(z, chunk)[1]

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Code vectors (..., d) for indices (...)."""
        return F.embedding(codes, self.codebook)

    # -- training ------------------------------------------------------------------------------
    def forward(self, z: torch.Tensor):
        """Quantise latents (m, d). Returns (q with straight-through gradient, codes (m,),
        commitment loss, per-latent squared quantisation error (m,)).

        In training mode the EMA statistics and codebook are updated from this batch."""
        z = z.float()
        if self.training and not bool(self.initialized):
            self.init_kmeanspp(z.detach())
        err, codes = self.nearest_with_error(z.detach())             # (m,), (m,)
        q = self.lookup(codes)                                       # (m, d)
        if self.training:
            self._ema_update(z.detach(), codes)
        commit = F.mse_loss(z, q.detach())
        q_st = z + (q - z).detach()                                  # straight-through
        return q_st, codes, commit, err.clamp_min(0.0)

    @torch.no_grad()
    def _ema_update(self, z: torch.Tensor, codes: torch.Tensor) -> None:
        k = self.codebook_size
        counts = torch.bincount(codes, minlength=k).float()         # (k,)
        sums = torch.zeros_like(self.ema_sum).index_add_(0, codes, z)
        self.window_count.add_(counts)
        self.ema_count.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.ema_count.sum()
        # Laplace smoothing keeps never-assigned codes finite (Sonnet's VectorQuantizerEMA).
        smoothed = (self.ema_count + self.eps) / (n + k * self.eps) * n
        cb = self.ema_sum / smoothed[:, None]
        self.codebook.copy_(F.normalize(cb, dim=1) if self.unit else cb)

    @torch.no_grad()
    def init_kmeanspp(self, z: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """k-means++ seeding of the codebook from latents z (m, d), m >= 1."""
        z = z.float()
        k, m = self.codebook_size, z.shape[0]
        first = int(torch.randint(m, (1,), generator=generator))
        centers = [z[first]]
        dmin = ((z - z[first]) ** 2).sum(1)                          # (m,)
        for _ in range(1, k):
            total = float(dmin.sum())
            if total <= 0.0:                                         # fewer distinct points than k
                i = int(torch.randint(m, (1,), generator=generator))
                centers.append(z[i] + 1e-3 * torch.randn(self.dim, generator=generator))
                continue
            i = int(torch.multinomial(dmin / total, 1, generator=generator))
            centers.append(z[i])
            dmin = torch.minimum(dmin, ((z - z[i]) ** 2).sum(1))
        self.codebook.copy_(torch.stack(centers))
        self.ema_count.fill_(1.0)
        self.ema_sum.copy_(self.codebook)
        self.initialized.fill_(True)

    @torch.no_grad()
    def dead_codes(self, min_count: float = 1.0) -> torch.Tensor:
        """Indices of codes assigned fewer than min_count times since the last restart check."""
        return torch.nonzero(self.window_count < min_count).flatten()

    @torch.no_grad()
    def restart_dead(self, z: torch.Tensor, err: torch.Tensor, min_count: float = 1.0,
                     generator: torch.Generator | None = None) -> int:
        """Move codes assigned fewer than min_count times since the last call onto latents
        z (m, d) drawn with probability proportional to their quantisation error err (m,);
        returns how many codes were restarted and starts a new counting window."""
        dead = self.dead_codes(min_count)
        self.window_count.zero_()
        n = int(dead.numel())
        if n == 0:
            return 0
        w = err.float().clamp_min(0.0) + 1e-12
        w = w / w.sum()
        take = int(min(n, z.shape[0]))
        idx = torch.multinomial(w, take, generator=generator)
        new = torch.unique(z[idx].float(), dim=0)        # one code per distinct pattern
        new = new[torch.randperm(len(new), generator=generator)]
        take = len(new)
        dead = dead[:take]
        self.codebook[dead] = new
        self.ema_count[dead] = 1.0
        self.ema_sum[dead] = new
        return take


def usage_stats(codes: torch.Tensor, codebook_size: int) -> dict[str, float]:
    """Fraction of the codebook used by `codes`, the number of distinct codes, and perplexity
    exp(H(code distribution)) (perplexity = K when all codes are equally likely)."""
    counts = torch.bincount(codes.flatten(), minlength=codebook_size).float()
    p = counts / counts.sum().clamp_min(1.0)
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    used = int((counts > 0).sum())
    return {"usage": used / codebook_size, "distinct_codes": used,
            "perplexity": float(math.exp(float(entropy)))}
