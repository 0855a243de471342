"""An independent, deliberately plain statement of the SCAIL-2 forward, for equivalence tests.

See docs/architecture.md, "Token layout" to "Timestep embedding and modulation".

It works on a Wan-keyed state dict and per-sample lists, the way upstream does, with float64 complex RoPE
looked up in position tables, explicit softmax attention and no shared code with `scail2.models`. It is slow
and only meant for tiny configs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _linear(sd, name, x):
    return F.linear(x, sd[f"{name}.weight"], sd[f"{name}.bias"])


def _rms(x, weight, eps):
    return (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)).type_as(x) * weight


def _layer_norm(x, eps, weight=None, bias=None):
    return F.layer_norm(x.float(), (x.shape[-1],), weight, bias, eps).type_as(x)


def _rope_tables(head_dim, length=1024):
    """Upstream-style tables: polar(1, pos * 10000^(-2j/d)) for pos < length, per axis, float64."""
    tables = []
    for axis_dim in (head_dim - 4 * (head_dim // 6), 2 * (head_dim // 6), 2 * (head_dim // 6)):
        freqs = 1.0 / torch.pow(10000.0, torch.arange(0, axis_dim, 2).to(torch.float64).div(axis_dim))
        angles = torch.outer(torch.arange(length).to(torch.float64), freqs)
        tables.append(torch.polar(torch.ones_like(angles), angles))
    return tables


def _grid_rotations(tables, f, h, w, dt, dh, dw):
    """[f, h, w, D/2] complex rotations by table lookup."""
    t_tab, h_tab, w_tab = tables
    parts = [
        t_tab[dt : dt + f].view(f, 1, 1, -1).expand(f, h, w, -1),
        h_tab[dh : dh + h].view(1, h, 1, -1).expand(f, h, w, -1),
        w_tab[dw : dw + w].view(1, 1, w, -1).expand(f, h, w, -1),
    ]
    return torch.cat(parts, dim=-1)


def sequence_rotations(head_dim, t, h, w, k, replace, offset=120):
    """Complex128 [S, D/2] for [extra refs | ref | video | pose] (h, w = video patch grid)."""
    tables = _rope_tables(head_dim)
    ref_dh = offset if replace else 0
    video_dt = k if replace else k + 1
    rows = []
    if k:
        rows.append(_grid_rotations(tables, k, h, w, 0, ref_dh, 0).reshape(-1, head_dim // 2))
    rows.append(_grid_rotations(tables, 1, h, w, k, ref_dh, 0).reshape(-1, head_dim // 2))
    rows.append(_grid_rotations(tables, t, h, w, video_dt, 0, 0).reshape(-1, head_dim // 2))
    pose = _grid_rotations(tables, t, h, w, video_dt, 0, offset)  # [t, h, w, D/2]
    pooled = torch.zeros(t, h // 2, w // 2, head_dim // 2, dtype=torch.complex128)
    for i in range(2):
        for j in range(2):
            pooled = pooled + pose[:, i::2, j::2]
    rows.append((pooled / 4).reshape(-1, head_dim // 2))
    return torch.cat(rows, dim=0)


def _apply_rope_complex(x, rotations):
    """x [S, n, d] -> rotated, in float64 complex as upstream."""
    s, n, d = x.shape
    xc = torch.view_as_complex(x.to(torch.float64).reshape(s, n, d // 2, 2))
    return torch.view_as_real(xc * rotations[:, None, :]).reshape(s, n, d).float()


def _attend(q, k, v):
    """q [S, n, d], k/v [L, n, d] -> [S, n*d]."""
    scores = torch.einsum("snd,lnd->nsl", q, k) / math.sqrt(q.shape[-1])
    return torch.einsum("nsl,lnd->snd", scores.softmax(-1), v).reshape(q.shape[0], -1)


def _block(sd, prefix, x, e0, context, rotations, cfg, n_img):
    n, eps = cfg["num_heads"], cfg["eps"]
    d = cfg["dim"] // n
    e = (sd[f"{prefix}.modulation"][0] + e0).chunk(6, dim=0)  # six [dim]
    y = _layer_norm(x, eps) * (1 + e[1]) + e[0]
    q = _rms(_linear(sd, f"{prefix}.self_attn.q", y), sd[f"{prefix}.self_attn.norm_q.weight"], eps).view(-1, n, d)
    k = _rms(_linear(sd, f"{prefix}.self_attn.k", y), sd[f"{prefix}.self_attn.norm_k.weight"], eps).view(-1, n, d)
    v = _linear(sd, f"{prefix}.self_attn.v", y).view(-1, n, d)
    attn = _attend(_apply_rope_complex(q, rotations), _apply_rope_complex(k, rotations), v)
    x = x + _linear(sd, f"{prefix}.self_attn.o", attn) * e[2]

    y = _layer_norm(x, eps, sd[f"{prefix}.norm3.weight"], sd[f"{prefix}.norm3.bias"])
    c = f"{prefix}.cross_attn"
    q = _rms(_linear(sd, f"{c}.q", y), sd[f"{c}.norm_q.weight"], eps).view(-1, n, d)
    img, txt = context[:n_img], context[n_img:]
    k = _rms(_linear(sd, f"{c}.k", txt), sd[f"{c}.norm_k.weight"], eps).view(-1, n, d)
    v = _linear(sd, f"{c}.v", txt).view(-1, n, d)
    out = _attend(q, k, v)
    if n_img:
        k_img = _rms(_linear(sd, f"{c}.k_img", img), sd[f"{c}.norm_k_img.weight"], eps).view(-1, n, d)
        v_img = _linear(sd, f"{c}.v_img", img).view(-1, n, d)
        out = out + _attend(q, k_img, v_img)
    x = x + _linear(sd, f"{c}.o", out)

    y = _layer_norm(x, eps) * (1 + e[4]) + e[3]
    y = _linear(sd, f"{prefix}.ffn.2", F.gelu(_linear(sd, f"{prefix}.ffn.0", y), approximate="tanh"))
    return x + y * e[5]


def _conv_patch(sd, name, x):
    """x [C, T, H, W] -> tokens [T*h*w, dim] for a (1, 2, 2) patch conv."""
    out = F.conv3d(x[None], sd[f"{name}.weight"], sd[f"{name}.bias"], stride=(1, 2, 2))[0]
    return out.flatten(1).t()


def reference_forward(
    sd,
    cfg,
    x,
    t,
    context,
    clip_fea,
    ref_latents,
    ref_masks,
    pose_latents,
    driving_masks,
    replace,
    history_mask=None,
    extra_ref_latents=None,
    extra_ref_masks=None,
):
    """Per-sample lists in, list of [16, T, H, W] out. `context` is a list of unpadded [L_i, text_dim]."""
    outs = []
    for i in range(len(x)):
        c, tt, hh, ww = x[i].shape
        hist = history_mask[i] if history_mask is not None else torch.zeros(4, tt, hh, ww)
        xi = torch.cat([x[i], hist], dim=0)
        ref = torch.cat([ref_latents[i], torch.ones(4, 1, hh, ww)], dim=0)
        pose = torch.cat([pose_latents[i], torch.ones(4, tt, hh // 2, ww // 2)], dim=0)
        main = _conv_patch(sd, "patch_embedding", torch.cat([ref, xi], dim=1))
        main = main + _conv_patch(sd, "patch_embedding_mask", ref_masks[i])
        pose_tok = _conv_patch(sd, "patch_embedding_pose", pose) + _conv_patch(
            sd, "patch_embedding_mask", driving_masks[i]
        )
        tokens = [main, pose_tok]
        k = 0
        if extra_ref_latents is not None:
            k = extra_ref_latents[i].shape[1]
            extra = torch.cat([extra_ref_latents[i], torch.ones(4, k, hh, ww)], dim=0)
            tokens.insert(
                0,
                _conv_patch(sd, "patch_embedding", extra) + _conv_patch(sd, "patch_embedding_mask", extra_ref_masks[i]),
            )
        seq = torch.cat(tokens, dim=0)

        half = cfg["freq_dim"] // 2
        ang = t[i].to(torch.float64) * torch.pow(10000.0, -torch.arange(half).to(torch.float64).div(half))
        sinus = torch.cat([torch.cos(ang), torch.sin(ang)]).float()
        e = _linear(sd, "time_embedding.2", F.silu(_linear(sd, "time_embedding.0", sinus)))
        e0 = _linear(sd, "time_projection.1", F.silu(e)).view(6, -1)

        txt = torch.cat([context[i], context[i].new_zeros(cfg["text_len"] - context[i].shape[0], context[i].shape[1])])
        txt = _linear(sd, "text_embedding.2", F.gelu(_linear(sd, "text_embedding.0", txt), approximate="tanh"))
        n_img = 0
        if clip_fea is not None:
            img = F.layer_norm(
                clip_fea[i], (clip_fea.shape[-1],), sd["img_emb.proj.0.weight"], sd["img_emb.proj.0.bias"]
            )
            img = _linear(sd, "img_emb.proj.3", F.gelu(_linear(sd, "img_emb.proj.1", img)))
            img = F.layer_norm(img, (img.shape[-1],), sd["img_emb.proj.4.weight"], sd["img_emb.proj.4.bias"])
            txt = torch.cat([img, txt])
            n_img = img.shape[0]

        rotations = sequence_rotations(cfg["dim"] // cfg["num_heads"], tt, hh // 2, ww // 2, k, replace)
        for b in range(cfg["num_layers"]):
            seq = _block(sd, f"blocks.{b}", seq, e0, txt, rotations, cfg, n_img)

        shift, scale = (sd["head.modulation"][0] + e).chunk(2, dim=0)
        out = _linear(sd, "head.head", _layer_norm(seq, cfg["eps"]) * (1 + scale) + shift)
        start = (k + 1) * (hh // 2) * (ww // 2)
        video = out[start : start + tt * (hh // 2) * (ww // 2)].view(tt, hh // 2, ww // 2, 1, 2, 2, c)
        outs.append(torch.einsum("fhwpqrc->cfphqwr", video).reshape(c, tt, hh, ww))
    return outs
