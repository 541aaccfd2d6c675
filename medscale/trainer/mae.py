"""Masked autoencoder (He et al. 2022; the MedMAE recipe) around a plain timm `VisionTransformer` encoder.

The encoder is exactly a timm model (any ViT name and size, image size, patch size, 1 or 3 channels), with its
position embedding replaced by the fixed 2D sin-cos one and frozen, so that the exported backbone loads in plain
timm. Shapes: `imgs: [N, C, H, W]`, patches `L = (H/p) * (W/p)`, encoder width `D`, decoder width `Dd`.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
from timm.models.vision_transformer import Block, VisionTransformer


def sincos_2d(dim: int, grid_h: int, grid_w: int, cls_token: bool = True) -> np.ndarray:
    """Fixed 2D sin-cos position embedding `[(1 +) grid_h * grid_w, dim]`: half the dims encode the row, half the
    column (each half: sin then cos of position x 1/10000^(2i/(dim/2))); the cls position is a zero vector."""
    if dim % 4:
        raise ValueError(f"sin-cos position embeddings need a width divisible by 4, got {dim}")

    def one_axis(positions: np.ndarray, width: int) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(width // 2, dtype=np.float64) / (width / 2.0))
        angles = np.outer(positions.reshape(-1), omega)  # [M, width/2]
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    rows, cols = np.meshgrid(np.arange(grid_h, dtype=np.float64), np.arange(grid_w, dtype=np.float64), indexing="ij")
    emb = np.concatenate([one_axis(rows, dim // 2), one_axis(cols, dim // 2)], axis=1)  # [grid_h * grid_w, dim]
    if cls_token:
        emb = np.concatenate([np.zeros((1, dim)), emb], axis=0)
    return emb.astype(np.float32)


def patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """`imgs: [N, C, H, W]` -> `[N, L, p*p*C]`, patches in row-major order, each patch (row, col, channel)."""
    n, c, h, w = imgs.shape
    x = imgs.reshape(n, c, h // p, p, w // p, p)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(n, (h // p) * (w // p), p * p * c)


def unpatchify(x: torch.Tensor, p: int, c: int, h: int, w: int) -> torch.Tensor:
    """The inverse of `patchify`: `[N, L, p*p*C]` -> `[N, C, H, W]`."""
    n = x.shape[0]
    x = x.reshape(n, h // p, w // p, p, p, c)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(n, c, h, w)


def random_masking(x: torch.Tensor, mask_ratio: float, generator: Optional[torch.Generator] = None
                   ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample random masking by argsort of uniform noise. `x: [N, L, D]` -> (kept `[N, L_keep, D]`,
    mask `[N, L]` (1 = removed), ids_restore `[N, L]`), with L_keep = int(L * (1 - mask_ratio))."""
    n, length, dim = x.shape
    keep = int(length * (1 - mask_ratio))
    noise = torch.rand(n, length, device=x.device, generator=generator)
    ids_shuffle = torch.argsort(noise, dim=1)  # ascending: small noise is kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    kept = torch.gather(x, 1, ids_shuffle[:, :keep].unsqueeze(-1).expand(-1, -1, dim))
    mask = torch.ones(n, length, device=x.device)
    mask[:, :keep] = 0
    return kept, torch.gather(mask, 1, ids_restore), ids_restore


def masked_patch_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error per patch, averaged over the removed patches only. `pred, target: [N, L, P]`,
    `mask: [N, L]` (1 = removed)."""
    per_patch = ((pred - target) ** 2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum()


def normalise_patches(target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """norm_pix_loss targets: each patch minus its mean over its unbiased std, `(t - mean) / sqrt(var + eps)`."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return (target - mean) / (var + eps) ** 0.5


class MaskedAutoencoder(nn.Module):
    """MAE with a timm ViT encoder and a small ViT decoder: `forward_encoder` / `forward_decoder` /
    `forward_loss`."""

    def __init__(self, encoder: VisionTransformer, decoder_dim: int = 512, decoder_depth: int = 8,
                 decoder_heads: int = 16, mask_ratio: float = 0.75, norm_pix_loss: bool = True) -> None:
        super().__init__()
        if not isinstance(encoder, VisionTransformer) or encoder.num_prefix_tokens != 1:
            raise ValueError("MAE needs a timm VisionTransformer with one class token and no register tokens")
        self.encoder = encoder
        self.patch = encoder.patch_embed.patch_size[0]
        self.grid = encoder.patch_embed.grid_size
        self.in_chans = encoder.patch_embed.proj.in_channels
        self.mask_ratio, self.norm_pix_loss = mask_ratio, norm_pix_loss
        width = encoder.embed_dim
        encoder.pos_embed.data.copy_(torch.from_numpy(sincos_2d(width, *self.grid)).unsqueeze(0))
        encoder.pos_embed.requires_grad_(False)

        self.decoder_embed = nn.Linear(width, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.register_buffer("decoder_pos_embed",
                             torch.from_numpy(sincos_2d(decoder_dim, *self.grid)).unsqueeze(0), persistent=False)
        self.decoder_blocks = nn.ModuleList(
            [Block(decoder_dim, decoder_heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(decoder_depth)])
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch * self.patch * self.in_chans)
        self._init_weights()

    def _init_weights(self) -> None:
        w = self.encoder.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.encoder.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for module in [*self.encoder.blocks.modules(), *self.modules_of_decoder()]:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def modules_of_decoder(self):
        """Every module of the decoder side (for initialisation)."""
        for part in (self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred):
            yield from part.modules()

    def forward_encoder(self, imgs: torch.Tensor, generator: Optional[torch.Generator] = None
                        ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`imgs: [N, C, H, W]` -> (latent `[N, 1 + L_keep, D]`, mask `[N, L]`, ids_restore `[N, L]`): patches get
        their position embedding, are masked, then the cls token (with its zero position) joins them."""
        enc = self.encoder
        x = enc.patch_embed(imgs) + enc.pos_embed[:, 1:, :]
        x, mask, ids_restore = random_masking(x, self.mask_ratio, generator)
        cls = (enc.cls_token + enc.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = enc.norm_pre(torch.cat([cls, x], dim=1))
        x = enc.norm(enc.blocks(x))
        return x, mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """(latent `[N, 1 + L_keep, D]`, ids_restore `[N, L]`) -> predicted pixels `[N, L, p*p*C]`."""
        x = self.decoder_embed(latent)
        n, length = ids_restore.shape
        masked = self.mask_token.expand(n, length + 1 - x.shape[1], -1)
        patches = torch.cat([x[:, 1:, :], masked], dim=1)
        patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))  # unshuffle
        x = torch.cat([x[:, :1, :], patches], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:, :]

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error on the removed patches only (targets normalised per patch with norm_pix_loss)."""
        target = patchify(imgs, self.patch)
        if self.norm_pix_loss:
            target = normalise_patches(target)
        return masked_patch_loss(pred, target, mask)

    def forward(self, imgs: torch.Tensor, generator: Optional[torch.Generator] = None
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`imgs: [N, C, H, W]` -> (loss, pred `[N, L, p*p*C]`, mask `[N, L]`)."""
        latent, mask, ids_restore = self.forward_encoder(imgs, generator)
        pred = self.forward_decoder(latent, ids_restore)
        return self.forward_loss(imgs, pred, mask), pred, mask

    def reconstruct(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """(masked input, reconstruction with the visible patches pasted back), both `[N, C, H, W]`, in the
        input's normalisation (norm_pix predictions are mapped back with each patch's own mean and std)."""
        p, (h, w), c = self.patch, imgs.shape[-2:], self.in_chans
        target = patchify(imgs, p)
        if self.norm_pix_loss:
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            pred = pred * (var + 1e-6) ** 0.5 + mean
        keep = (1 - mask).unsqueeze(-1)
        masked = unpatchify(target * keep, p, c, h, w)
        pasted = unpatchify(target * keep + pred * (1 - keep), p, c, h, w)
        return masked, pasted
