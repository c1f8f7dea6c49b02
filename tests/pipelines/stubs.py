"""A deterministic stand-in VAE for the prepare_*() tests (the real VAEs have their own tests)."""
import torch
import torch.nn.functional as F


class StubVAE:
    """encode: keep pixel frames 0, 4, 8, ..., average-pool by the spatial stride, tile to z_dim
    channels (channel c gets + c). Records every video it is given."""

    def __init__(self, z_dim: int, stride: tuple[int, int, int]):
        self.z_dim, self.stride = z_dim, stride
        self.videos = []

    def encode(self, videos):
        out = []
        for video in videos:
            self.videos.append(video.clone())
            frames = video[:, ::self.stride[0]]                       # [3, 1+k, H, W]
            pooled = F.avg_pool2d(frames.transpose(0, 1), self.stride[1]).transpose(0, 1)
            reps = -(-self.z_dim // 3)
            latent = pooled.repeat(reps, 1, 1, 1)[:self.z_dim]
            out.append(latent + torch.arange(self.z_dim, dtype=latent.dtype).view(-1, 1, 1, 1))
        return out
