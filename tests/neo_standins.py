"""Small stand-ins of Forge Neo 2.26's Krea 2, Ernie-Image and PiD models, written from Neo's source as vendored by
exo101/sd-webui-forge-neo-v3 (``webui/``, commit 5692d2d1, ``modules_forge/forge_version.py``: release 2.26).

No Neo code is copied; each class names the Neo file whose shapes and call conventions it reproduces (class names,
block-list attributes, each block's signature and output, the order of text and image tokens, how the text and the
latent arrive). The maths inside the blocks is a small stand-in (joint attention with linear layers), so that text
tokens depend on the image tokens as in the real blocks. Neo calls each model as ``forward(x, timesteps,
context=c_crossattn, control=..., transformer_options=..., **extra_conds)`` (backend/modules/k_model.py), which
``tests/forge_standins.KModel`` mirrors.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn


class _Mix(nn.Module):
    """Joint attention over one sequence, then a residual update (the stand-in maths of every block here)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        att = torch.softmax(self.q(seq) @ self.k(seq).transpose(1, 2) / math.sqrt(seq.shape[-1]), dim=-1)
        return seq + att @ self.v(seq)


# --- backend/nn/krea.py: SingleStreamBlock, SingleStreamDiT ---------------------------------------------------------
class KreaSingleStreamBlock(nn.Module):
    """``forward(self, x, vec, freqs, mask=None, transformer_options={})`` on the [text; image] sequence; returns a
    new tensor (krea.py l.283-287)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mix = _Mix(dim)

    def forward(self, x, vec, freqs, mask=None, transformer_options={}):  # noqa: B006
        return self.mix(x + vec[:, None])


class SingleStreamDiT(nn.Module):
    """``forward(self, x, timesteps, context, attention_mask=None, transformer_options={}, **kwargs)`` (krea.py
    l.357-410): a 5-D latent [B, C, 1, h, w] (Neo's Krea engine sets ``is_wan``) folded to 4-D, padded to ``patch``
    (2), patchified; ``context.squeeze(1)`` (the text engine of this tree gives [B, 1, L, D]); one [text; image]
    sequence through ``self.blocks``, called positionally ``block(combined, tvec, freqs, None,
    transformer_options=...)``; the image tokens are cropped back out. The patch size is ``self.patch`` (there is no
    ``patch_size`` attribute)."""

    def __init__(self, features: int = 32, channels: int = 4, txtdim: int = 16, layers: int = 3, patch: int = 2):
        super().__init__()
        self.patch, self.channels = patch, channels
        self.first = nn.Linear(channels * patch * patch, features)
        self.txtmlp = nn.Linear(txtdim, features)
        self.tmlp = nn.Linear(1, features)
        self.blocks = nn.ModuleList(KreaSingleStreamBlock(features) for _ in range(layers))
        self.last = nn.Linear(features, channels * patch * patch)

    def forward(self, x, timesteps, context, attention_mask=None, transformer_options={}, **kwargs):  # noqa: B006
        temporal = x.ndim == 5
        if temporal:
            b5, c5, t5, h5, w5 = x.shape
            x = x.permute(0, 2, 1, 3, 4).reshape(b5 * t5, c5, h5, w5)
        _, _, h, w = x.shape
        p = self.patch
        x = nn.functional.pad(x, (0, (-w) % p, 0, (-h) % p), mode="circular")
        img = self.first(rearrange(x, "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=p, pw=p))
        context = self.txtmlp(context.squeeze(1))
        tvec = self.tmlp(timesteps.reshape(-1, 1).to(img.dtype))
        txtlen, imglen = context.shape[1], img.shape[1]
        combined = torch.cat((context, img), dim=1)
        for block in self.blocks:
            combined = block(combined, tvec, None, None, transformer_options=transformer_options)
        out = self.last(combined[:, txtlen : txtlen + imglen])
        out = rearrange(out, "b (h w) (c ph pw) -> b c (h ph) (w pw)", h=(h + p - 1) // p, ph=p, pw=p)[..., :h, :w]
        if temporal:
            out = out.reshape(b5, t5, c5, h5, w5).permute(0, 2, 1, 3, 4)
        return out


# --- backend/nn/ernie.py: ErnieImageSharedAdaLNBlock, ErnieImageModel -----------------------------------------------
class ErnieImageSharedAdaLNBlock(nn.Module):
    """``forward(self, x, rotary_pos_emb, temb, attention_mask=None)`` on the [image; text] sequence, batch-first;
    returns a new tensor (ernie.py l.159-173)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mix = _Mix(dim)

    def forward(self, x, rotary_pos_emb, temb, attention_mask=None):
        return self.mix(x + temb[:, None])


class ErnieImageModel(nn.Module):
    """``forward(self, x, timesteps, context, **kwargs)`` (ernie.py l.231-290): the latent [B, C, H, W] embedded
    per ``patch_size`` (1) patch, the text ``context`` [B, L, D] projected; one [image; text] sequence through
    ``self.layers``, called ``layer(hidden_states, rotary_pos_emb, temb)``; the image tokens are read back. No
    mask, no padding, no references."""

    def __init__(self, hidden_size: int = 32, num_layers: int = 3, in_channels: int = 4, text_in_dim: int = 16):
        super().__init__()
        self.patch_size = 1
        self.x_embedder = nn.Conv2d(in_channels, hidden_size, 1, 1)
        self.text_proj = nn.Linear(text_in_dim, hidden_size, bias=False)
        self.time = nn.Linear(1, hidden_size)
        self.layers = nn.ModuleList(ErnieImageSharedAdaLNBlock(hidden_size) for _ in range(num_layers))
        self.final_linear = nn.Linear(hidden_size, in_channels)

    def forward(self, x, timesteps, context, **kwargs):
        b, c, h, w = x.shape
        n_img = (h // self.patch_size) * (w // self.patch_size)
        img = self.x_embedder(x).flatten(2).transpose(1, 2)
        hidden_states = torch.cat([img, self.text_proj(context)], dim=1)
        temb = self.time(timesteps.reshape(-1, 1).to(img.dtype) / 1000.0)
        for layer in self.layers:
            hidden_states = layer(hidden_states, None, temb)
        patches = self.final_linear(hidden_states)[:, :n_img]
        return patches.transpose(1, 2).reshape(b, c, h, w)


# --- backend/nn/pixeldit/: MMDiTBlockT2I (model.py), PixDiT_T2I, PidNet (pid.py) ----------------------------------
class MMDiTBlockT2I(nn.Module):
    """``forward(self, x, y, c, pos_img, pos_txt=None, attn_mask=None, transformer_options={})`` returns
    ``(x, y)``: image first, new tensors (model.py l.98-111)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mix = _Mix(dim)
        self.x_out, self.y_out = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x, y, c, pos_img, pos_txt=None, attn_mask=None, transformer_options={}):  # noqa: B006
        mixed = self.mix(torch.cat([y, x], dim=1) + c[:, None])
        return x + self.x_out(mixed[:, y.shape[1] :]), y + self.y_out(mixed[:, : y.shape[1]])


class PiTBlock(nn.Module):
    """A pixel block: conditioned on the patch tokens, no text (modules.py l.110-138)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.out = nn.Linear(dim, dim)

    def forward(self, x, s_cond, image_height, image_width, patch_size, mask=None, transformer_options={}):  # noqa: B006
        return x + self.out(s_cond)


class PixDiT_T2I(nn.Module):  # noqa: N801 (Neo's name)
    """``forward(self, x, timesteps, context=None, attention_mask=None, transformer_options={}, **kwargs)``
    (model.py l.182-230): the pixel image padded to ``patch_size`` (16 in Neo), the text cut to ``txt_max_length``
    (300 in Neo) tokens, dual-stream ``patch_blocks`` called ``blk(s, y_emb, condition, pos_img, pos_txt, None,
    transformer_options=...)``, then text-free ``pixel_blocks``."""

    def __init__(self, dim: int = 32, in_channels: int = 3, txt_embed_dim: int = 16, depth: int = 3, patch: int = 2,
                 txt_max_length: int = 8) -> None:  # fmt: skip
        super().__init__()
        self.patch_size, self.txt_max_length = patch, txt_max_length
        self.s_embedder = nn.Linear(in_channels * patch * patch, dim)
        self.y_embedder = nn.Linear(txt_embed_dim, dim)
        self.t_embedder = nn.Linear(1, dim)
        self.patch_blocks = nn.ModuleList(MMDiTBlockT2I(dim) for _ in range(depth))
        self.pixel_blocks = nn.ModuleList(PiTBlock(dim) for _ in range(2))
        self.final = nn.Linear(dim, in_channels * patch * patch)

    def forward(self, x, timesteps, context=None, attention_mask=None, transformer_options={}, **kwargs):  # noqa: B006
        b, c, h, w = x.shape
        p = self.patch_size
        x = nn.functional.pad(x, (0, (-w) % p, 0, (-h) % p), mode="circular")
        s = self.s_embedder(rearrange(x, "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=p, pw=p))
        length = min(context.shape[1], self.txt_max_length)
        y = self.y_embedder(context[:, :length])
        condition = self.t_embedder(timesteps.reshape(-1, 1).to(s.dtype) / 1000.0)
        for blk in self.patch_blocks:
            s, y = blk(s, y, condition, None, None, None, transformer_options=transformer_options)
        for blk in self.pixel_blocks:
            s = blk(s, s, h, w, p)
        out = rearrange(self.final(s), "b (h w) (c ph pw) -> b c (h ph) (w pw)", h=(h + p - 1) // p, ph=p, pw=p)
        return out[..., :h, :w]


class PidNet(PixDiT_T2I):
    """pid.py l.126-200: a PixDiT_T2I whose ``forward`` gates the image stream with a low-quality latent (not the
    text) before calling ``PixDiT_T2I.forward``."""
