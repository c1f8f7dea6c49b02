"""Flow-matching training objective for the Wan DiT, in the reference's conventions; reusable for
fine-tuning any WanModel (tiny or released).

    x_t = (1 - sigma) * x0 + sigma * noise,   target v = noise - x0      (spec 8: velocity, x0 = x_t - sigma v)
    sigma = shift(u), u ~ U(0, 1),  shift(s) = k s / (1 + (k - 1) s)    (spec 8.1, the sampler's shift)
    the model sees t = sigma * num_train_timesteps                       (spec 3.3, float here)

Classifier-free guidance: each caption is replaced by the negative prompt with probability
`text_drop` (the pipelines' unconditional pass uses that prompt, spec 7). Image mode of TI2V
(spec 3.7, 7.3): with probability `image_prob` a sample keeps latent frame 0 clean, its tokens get
t = 0, and it is left out of the loss, since sampling re-imposes it after every step.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..utils.fm_solvers import shift_sigmas  # the solvers' timestep shift (spec 8.1); works on tensors too


def init_dit_weights(model: nn.Module) -> None:
    """The reference's initialisation (spec 3.1): xavier-uniform linears with zero biases, the patch
    embedding xavier-uniform on its flattened weight, text/time embeddings N(0, 0.02), zero head."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
    weight = model.patch_embedding.weight
    nn.init.xavier_uniform_(weight.data.view(weight.shape[0], -1))
    nn.init.zeros_(model.patch_embedding.bias)
    for sequential in (model.text_embedding, model.time_embedding):
        for module in sequential:
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
    nn.init.zeros_(model.head.head.weight)


@dataclass
class FlowMatching:
    shift: float = 5.0                 # ti2v-5B samples with shift 5 (spec 2.2)
    text_drop: float = 0.1             # probability of training a sample unconditionally
    image_prob: float = 0.0            # probability of TI2V image mode (first latent frame given)
    num_train_timesteps: int = 1000

    def sample_sigmas(self, n: int, generator: torch.Generator | None = None,
                      device: torch.device | str = 'cpu') -> Tensor:
        """n noise levels in (0, 1): uniform, then shifted towards noise like the sampling schedule."""
        u = torch.rand(n, generator=generator, device=device).clamp(1e-4, 1 - 1e-4)
        return shift_sigmas(u, self.shift)

    def drop_text(self, texts: list[str], negative: str, generator: torch.Generator | None = None) -> list[str]:
        """Each text replaced by `negative` with probability `text_drop` (classifier-free guidance)."""
        drop = (torch.rand(len(texts), generator=generator) < self.text_drop).tolist()
        return [negative if d else t for t, d in zip(texts, drop)]

    def loss(self, model: nn.Module, latents: Tensor, context: list[Tensor],
             generator: torch.Generator | None = None) -> Tensor:
        """Mean squared velocity error of `model` on clean latents [B, C, T, H, W] (fp32) and one
        text embedding [L_i, text_dim] per sample. `generator` lives on the latents' device."""
        b, _, frames, h, w = latents.shape
        pt, ph, pw = model.patch_size
        assert pt == 1, 'image mode conditions whole latent frames, so one frame per token'
        device = latents.device
        sigma = self.sample_sigmas(b, generator, device)
        noise = torch.randn(latents.shape, generator=generator, device=device, dtype=latents.dtype)
        s = sigma.view(b, 1, 1, 1, 1)
        noisy = (1 - s) * latents + s * noise
        target = noise - latents

        # per latent frame: 1 = noised and scored, 0 = given clean (image mode, frame 0)
        given = torch.rand(b, generator=generator, device=device) < self.image_prob
        keep = torch.ones(b, frames, device=device)
        keep[:, 0] = (~given).float()
        keep5 = keep.view(b, 1, frames, 1, 1)
        noisy = keep5 * noisy + (1 - keep5) * latents

        timesteps = sigma * self.num_train_timesteps
        per_token = (keep * timesteps[:, None])[:, :, None].expand(b, frames, (h // ph) * (w // pw))
        seq_len = per_token.shape[1] * per_token.shape[2]
        pred = torch.stack(model(list(noisy), t=per_token.reshape(b, seq_len), context=context, seq_len=seq_len))
        error = (pred.float() - target.float()).pow(2) * keep5
        scored = keep.sum() * latents.shape[1] * h * w
        return error.sum() / scored

