"""Vector quantisation: map continuous vectors to the nearest of K learned codes.

VQ-VAE (van den Oord et al. 2017, arXiv:1711.00937, Eq. 3):

    k = argmin_j ||z_e - e_j||^2                         the token
    z_q = z_e + sg(e_k - z_e)                             straight-through: forward e_k, gradient to z_e
    L = ||sg(z_e) - e_k||^2 + beta ||z_e - sg(e_k)||^2    codebook term + commitment term

IRIS's tokenizer (arXiv:2209.00588, Sec. 2.1) and Genie's video tokenizer and latent actions
(arXiv:2402.15391, Sec. 2.1) all use this quantiser with beta = 0.25. Codes that the encoder
stops choosing never receive a gradient again ("dead codes"); `VectorQuantizer` keeps an
exponential moving average of each code's share of the assignments and, in training, moves
codes whose share falls below a threshold onto encoder outputs of the current batch (the
restart of Dhariwal et al. 2020's Jukebox, Sec. 3.2, and of Genie's tokenizer).

Usage and perplexity are reported so that a collapsed codebook shows in the logs: perplexity =
exp(entropy of the batch's code histogram), between 1 (one code used) and K (all equally).

Shape legend: N any leading dimensions (flattened inside), D code dimension, K codebook size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from wmlab.core.errors import ShapeError


@dataclass(frozen=True)
class CodebookLossScales:
    """The quantiser's two loss weights, shared by the loss-scale configs of every family with a
    VQ tokenizer (wmlab.models.tokens, and Genie's tokenizer in wmlab.models.latent_action)."""

    codebook: float = 1.0
    """||sg(z) - e||^2, moves the codes (`loss/codebook`)."""
    commitment: float = 0.25
    """||z - sg(e)||^2, VQ-VAE's beta (0.25 in VQ-VAE, IRIS and Genie) (`loss/commitment`)."""


@dataclass
class Quantized:
    """The result of quantising a batch of vectors z (..., D)."""

    quantized: torch.Tensor
    """(..., D) the chosen codes, with straight-through gradients into z."""
    indices: torch.Tensor
    """(...) long, the chosen code of each vector: the tokens."""
    codebook_loss: torch.Tensor
    """0-d: mean ||sg(z) - e_k||^2 (moves the codes towards the encoder outputs)."""
    commitment_loss: torch.Tensor
    """0-d: mean ||z - sg(e_k)||^2, unweighted (keeps the encoder near its codes)."""
    loss: torch.Tensor
    """0-d: codebook_loss + beta * commitment_loss (Eq. 3 of VQ-VAE, averaged over elements)."""
    perplexity: torch.Tensor
    """0-d: exp(entropy) of this batch's code histogram, in [1, K]."""
    usage: torch.Tensor
    """0-d: the fraction of the K codes chosen at least once in this batch."""
    restarted: int = 0
    """Dead codes moved onto encoder outputs during this call (training only)."""

    def metrics(self, prefix: str = "vq") -> dict[str, torch.Tensor]:
        """{prefix/perplexity, prefix/usage, prefix/restarted} as 0-d tensors, for logging."""
        return {
            f"{prefix}/perplexity": self.perplexity.detach(),
            f"{prefix}/usage": self.usage.detach(),
            f"{prefix}/restarted": torch.tensor(float(self.restarted)),
        }


class VectorQuantizer(nn.Module):
    """A codebook of K codes of dimension D with straight-through gradients.

    codebook_size: K. dim: D. beta: weight of the commitment term (0.25 in VQ-VAE, IRIS, Genie).
    dead_code_threshold: in training, codes whose moving-average share of the assignments falls
        below threshold / K are restarted on random encoder outputs of the batch (0 turns it off).
    usage_decay: decay of that moving average, per call.
    normalize: quantise L2-normalised vectors against L2-normalised codes (cosine distance, as
        in ViT-VQGAN, arXiv:2110.04627, Sec. 3.2); off in IRIS.
    restart_on: "random": a dead code moves onto an encoder output drawn uniformly (Jukebox);
        "error": drawn with probability proportional to its squared distance from its code, so
        that restarts go to what the codebook represents worst (a small object that shares the
        background's code) rather than to the common background.
    """

    def __init__(
        self,
        codebook_size: int,
        dim: int,
        beta: float = 0.25,
        dead_code_threshold: float = 0.0,
        usage_decay: float = 0.99,
        normalize: bool = False,
        restart_on: str = "random",
    ):
        super().__init__()
        if codebook_size < 2:
            raise ValueError(f"a codebook needs at least 2 codes, got {codebook_size}")
        if dim < 1:
            raise ValueError(f"the code dimension must be positive, got {dim}")
        if dead_code_threshold < 0 or not 0 < usage_decay < 1:
            raise ValueError("dead_code_threshold must be >= 0 and usage_decay in (0, 1)")
        if restart_on not in ("random", "error"):
            raise ValueError(f"restart_on must be 'random' or 'error', got {restart_on!r}")
        self.restart_on = restart_on
        self.codebook_size = int(codebook_size)
        self.dim = int(dim)
        self.beta = float(beta)
        self.dead_code_threshold = float(dead_code_threshold)
        self.usage_decay = float(usage_decay)
        self.normalize = normalize
        self.codebook = nn.Embedding(self.codebook_size, self.dim)
        # Small uniform initial codes, as in VQ-VAE's and IRIS's code: every code starts near the
        # origin, where a freshly initialised encoder's outputs also lie.
        nn.init.uniform_(self.codebook.weight, -1.0 / self.codebook_size, 1.0 / self.codebook_size)
        # Every code starts at the uniform share, so none counts as dead before it had a chance.
        self.register_buffer("average_usage", torch.full((self.codebook_size,), 1.0 / self.codebook_size))

    def codes(self) -> torch.Tensor:
        """(K, D) the codebook as used for matching (normalised when `normalize`)."""
        weight = self.codebook.weight
        return F.normalize(weight, dim=-1) if self.normalize else weight

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Tokens (...) of vectors z (..., D): the index of the nearest code."""
        self._check(z)
        flat = z.reshape(-1, self.dim)
        if self.normalize:
            flat = F.normalize(flat, dim=-1)
        codes = self.codes()
        # ||z||^2 - 2 z.e + ||e||^2 without forming the (N, K, D) difference.
        distances = flat.pow(2).sum(-1, keepdim=True) - 2 * flat @ codes.t() + codes.pow(2).sum(-1)[None]
        return distances.argmin(-1).reshape(z.shape[:-1])

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Codes (..., D) of tokens (...) long."""
        if indices.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise ShapeError(f"tokens must be integers, got {indices.dtype}")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.codebook_size):
            raise ShapeError(
                f"tokens must lie in [0, {self.codebook_size}), got values in [{int(indices.min())}, {int(indices.max())}]"
            )
        return F.embedding(indices.long(), self.codes())

    def forward(self, z: torch.Tensor) -> Quantized:
        """Quantise z (..., D) -> `Quantized` (codes with straight-through gradients, tokens, losses, metrics)."""
        self._check(z)
        if self.normalize:
            z = F.normalize(z, dim=-1)
        indices = self.nearest(z)
        codes = self.lookup(indices)
        codebook_loss = (z.detach() - codes).pow(2).mean()
        commitment_loss = (z - codes.detach()).pow(2).mean()
        quantized = z + (codes - z).detach()
        counts = torch.bincount(indices.reshape(-1), minlength=self.codebook_size).float()
        share = counts / counts.sum().clamp_min(1.0)
        entropy = -(share * share.clamp_min(1e-12).log()).sum()
        restarted = 0
        if self.training:
            with torch.no_grad():
                self.average_usage.mul_(self.usage_decay).add_(share, alpha=1 - self.usage_decay)
            if self.dead_code_threshold > 0:
                errors = (z.detach() - codes.detach()).pow(2).sum(-1).reshape(-1)
                restarted = self.restart_dead_codes(z.detach().reshape(-1, self.dim), errors)
        return Quantized(
            quantized=quantized,
            indices=indices,
            codebook_loss=codebook_loss,
            commitment_loss=commitment_loss,
            loss=codebook_loss + self.beta * commitment_loss,
            perplexity=entropy.exp(),
            usage=(counts > 0).float().mean(),
            restarted=restarted,
        )

    @torch.no_grad()
    def restart_dead_codes(self, encodings: torch.Tensor, errors: torch.Tensor | None = None) -> int:
        """Move every code whose moving-average share is below dead_code_threshold / K onto a
        row of encodings (N, D) (plus a little noise, so that two restarted codes never
        coincide): a random row, or with `restart_on` "error" a row drawn in proportion to its
        quantisation error errors (N,); returns how many moved. Their moving average restarts at
        the uniform share."""
        dead = torch.nonzero(self.average_usage < self.dead_code_threshold / self.codebook_size).reshape(-1)
        if dead.numel() == 0 or encodings.shape[0] == 0:
            return 0
        if self.restart_on == "error" and errors is not None and float(errors.sum()) > 0:
            rows = torch.multinomial(errors.float(), dead.numel(), replacement=True)
        else:
            rows = torch.randint(encodings.shape[0], (dead.numel(),), device=encodings.device)
        chosen = encodings[rows]
        noise = 1e-3 * chosen.std().clamp_min(1e-6) * torch.randn_like(chosen)
        self.codebook.weight.data[dead] = (chosen + noise).to(self.codebook.weight.dtype)
        self.average_usage[dead] = 1.0 / self.codebook_size
        return int(dead.numel())

    def _check(self, z: torch.Tensor) -> None:
        if z.shape[-1:] != (self.dim,):
            raise ShapeError(f"vectors to quantise: expected (..., {self.dim}), got {tuple(z.shape)}")
