"""Prototype (session of 2026-12-07): the grid scheme on coloured sprites, SPACE's route, before
it is folded into the package (``airscene.grid`` is grey and additive today).

Every cell of 8 px proposes one object (z_pres, a cell-local window u, z_what read from the
RGB glimpse) in one convolutional pass over the image and the image less its background; an
object is an appearance and a mask (``AppearanceMaskDecoder``); objects are composited without
order: their premultiplied colours and masks are summed, the colour normalised where the masks
sum over 1, over the smooth 4x4 colour-grid background (``SmoothBackground``, its detail let
in over the first 1,500 steps). The objective is the digits grid's: each cell's z_pres summed
out exactly against the others as drawn (``objective.cellwise_objective``), in patches; the
background's gradient from the whole image's likelihood with the objects as drawn, plus its
KL. What it measured: results/clutter/findings.md ("Sprites on the grid").

    python train.py OUT STEPS [key=value ...]   # writes OUT.pt, OUT.json; prints its evals
    python count.py OUT [key=value ...]         # counts it on 1,000 held-out scenes
"""

from __future__ import annotations

import json
import math
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from airscene.background import SmoothBackground
from airscene.config import DataConfig, MaskedConfig, ModelConfig
from airscene.densities import normal_log_prob, standard_normal_log_prob
from airscene.masked_objects import adjusted_rand_index
from airscene.networks import AppearanceMaskDecoder, GlimpseEncoder
from airscene.registry import scene_family
from airscene.spatial import read_grid, write_glimpse

torch.set_num_threads(2)

OPTS = dict(
    cell=8,
    side=14.0,
    log_side_sd=0.25,
    reach=0.5,
    clip=1.5,
    glimpse=16,
    z_what=16,
    hidden=200,
    rho=0.01,
    sigma=0.3,
    lr=1e-3,
    batch=32,
    detail_steps=1500,
    anneal=1000,
    warmup=1000,
    channels=64,
    mask_bias=-2.0,
    seed=0,
    eval_every=1000,
    n_train=20000,
    composite="mix",
)


class CellNet(nn.Module):
    def __init__(self, inp, width, out):
        super().__init__()
        self.f = nn.Sequential(
            nn.Conv2d(inp, 32, 4, 2, 1),
            nn.CELU(),
            nn.Conv2d(32, 64, 4, 2, 1),
            nn.CELU(),
            nn.Conv2d(64, width, 4, 2, 1),
            nn.CELU(),
            nn.Conv2d(width, width, 3, 1, 1),
            nn.CELU(),
            nn.Conv2d(width, width, 3, 1, 1),
            nn.CELU(),
        )
        self.head = nn.Conv2d(width, out, 1)

    def forward(self, x):
        return self.head(self.f(x))


class SpritesGrid(nn.Module):
    def __init__(self, o):
        super().__init__()
        self.o = o
        self.C = 3
        self.size = 64
        mc = ModelConfig(canvas_size=64, channels=3, background="smooth", objects=MaskedConfig())
        self.background = SmoothBackground(mc)
        self.net = CellNet(6, o["channels"], 7)
        with torch.no_grad():
            self.net.head.weight.mul_(0.1)
            self.net.head.bias.zero_()
            self.net.head.bias[0] = -2.0
            self.net.head.bias[4:] = -2.0
        G = o["glimpse"]
        self.encoder = GlimpseEncoder(3 * G * G, o["hidden"], o["z_what"])
        self.decoder = AppearanceMaskDecoder(o["z_what"], o["hidden"], G, 3, o["mask_bias"])
        c = o["cell"]
        half = o["reach"] * c + 0.5 * o["side"] * math.exp(o["clip"] * o["log_side_sd"])
        self.margin = max(0, math.ceil(half - c / 2))
        self.patch = c + 2 * self.margin

    # geometry
    def windows(self, u, per_row):
        c = self.o["cell"]
        side = self.o["side"] * torch.exp(self.o["log_side_sd"] * u[..., 0])
        offset = self.o["reach"] * c * torch.tanh(u[..., 1:3])
        cell = torch.arange(u.shape[-2])
        centre = torch.stack([cell % per_row, cell // per_row], -1).to(u.dtype)
        centre = (centre + 0.5) * c + offset
        return side, offset, centre

    def propose(self, x, bg, sample=True):
        B = x.shape[0]
        out = self.net(torch.cat([x, x - bg], 1))
        rows, cols = out.shape[-2:]
        K = rows * cols
        out = out.permute(0, 2, 3, 1).reshape(B, K, 7)
        logits, u_loc = out[..., 0], out[..., 1:4]
        u_scale = 0.5 * torch.sigmoid(out[..., 4:]) + 1e-3
        u = u_loc + u_scale * torch.randn_like(u_loc) if sample else u_loc
        side, offset, centre = self.windows(u, cols)
        zw = torch.cat([(side / self.size)[..., None], centre / self.size * 2 - 1], -1)
        G = self.o["glimpse"]
        where = read_grid(zw.flatten(0, 1), G).view(B, K * G, G, 2)
        glimpse = F.grid_sample(x, where, align_corners=False)  # (B, 3, K*G, G)
        glimpse = glimpse.view(B, 3, K, G, G).permute(0, 2, 1, 3, 4).reshape(B * K, -1)
        wl, ws = self.encoder(glimpse)
        z_what = wl + ws * torch.randn_like(wl) if sample else wl
        in_patch = torch.cat(
            [(side / self.patch)[..., None], offset / (self.patch / 2)], -1
        ).flatten(0, 1)
        patches = write_glimpse(self.decoder(z_what), in_patch, self.patch)  # (BK, 4, P, P)
        log_q = normal_log_prob(u, u_loc, u_scale).sum(-1) + normal_log_prob(z_what, wl, ws).sum(
            -1
        ).view(B, K)
        log_p = standard_normal_log_prob(u).sum(-1) + standard_normal_log_prob(z_what).sum(-1).view(
            B, K
        )
        return dict(
            logits=logits,
            u=u,
            zw=zw,
            z_what=z_what.view(B, K, -1),
            log_q=log_q,
            log_p=log_p,
            patches=patches.view(B, K, -1),
            cols=cols,
        )

    def fold(self, patches, z_pres):
        side = self.size + 2 * self.margin
        canvas = F.fold(
            (z_pres.unsqueeze(-1) * patches).transpose(1, 2),
            (side, side),
            self.patch,
            stride=self.o["cell"],
        )
        return canvas  # (B, 4, side, side) with ring

    def unfold(self, canvas_ring):
        return F.unfold(canvas_ring, self.patch, stride=self.o["cell"]).transpose(1, 2)

    def composite(self, summed, bg):
        """summed (..., 4, ...) channel-first sums of premultiplied colour and coverage."""
        numer, cover = summed[:, :3], summed[:, 3:]
        if self.o["composite"] == "mix":
            colour = numer / cover.clamp(min=1.0)
        else:
            colour = numer
        return colour + (1 - cover.clamp(max=1.0)) * bg

    def ring(self, img):
        m = self.margin
        return F.pad(img, (m, m, m, m))

    def patch_loglik(self, x, bg, summed_patches, valid):
        """log p(x | z) of each cell's patch (B, K), its pixels inside the image (``valid``,
        (B * K, 1, P, P)), from the summed objects' patches over the background's."""
        B, K, _ = summed_patches.shape
        P = self.patch
        s = summed_patches.reshape(B * K, 4, P, P)
        xp = x.reshape(B * K, 3, P, P)
        bp = bg.reshape(B * K, 3, P, P)
        mean = self.composite(s, bp)
        ll = normal_log_prob(xp, mean, torch.tensor(self.o["sigma"]))
        return (ll * valid).flatten(1).sum(1).view(B, K)

    def full(self, bg, patches, z_pres):
        """The mean image (B, 3, 64, 64) of the present objects' ``patches`` over ``bg``."""
        m = self.margin
        canvas = self.fold(patches, z_pres)[:, :, m : m + self.size, m : m + self.size]
        return self.composite(canvas, bg)

    def log_likelihood(self, x, bg, patches, z_pres):
        """log p(x | z) of each whole image (B,)."""
        mean = self.full(bg, patches, z_pres)
        return normal_log_prob(x, mean, torch.tensor(self.o["sigma"])).flatten(1).sum(1)

    def segmentation(self, cells, z_pres, background=True):
        """Per pixel, 0 for the background or 1 + the cell whose share is largest (B, 64, 64):
        an object's share is its mask over the masks' sum where that exceeds 1, the
        background's one minus the masks' sum; without ``background``, the background takes
        only the pixels no object's mask reaches (1e-3)."""
        batch, cells_n = z_pres.shape
        masks = torch.zeros(batch, cells_n, 64, 64)
        on = z_pres.nonzero()
        if len(on):
            glimpse = self.decoder(cells["z_what"][on[:, 0], on[:, 1]])
            where = cells["zw"][on[:, 0], on[:, 1]]
            masks[on[:, 0], on[:, 1]] = write_glimpse(glimpse, where, 64)[:, 3]
        coverage = masks.sum(1, keepdim=True)
        if background:
            shares = torch.cat([1 - coverage.clamp(max=1), masks / coverage.clamp(min=1)], 1)
        else:
            shares = torch.cat([torch.full_like(coverage, 1e-3), masks], 1)
        return shares.argmax(1).numpy()


def options(args):
    """The prototype's options (``OPTS``) with ``key=value`` overrides."""
    o = dict(OPTS)
    for arg in args:
        key, value = arg.split("=")
        o[key] = type(o[key])(value)
    return o


def train(out, steps, o):
    torch.manual_seed(o["seed"])
    family = scene_family("sprites")
    data = DataConfig(
        kind="sprites", canvas_size=64, counts=(0, 1, 2, 3, 4), n_train=o["n_train"], n_test=1000
    )
    tr = family.load(data, "train")
    te = family.load(data, "test")
    images = torch.from_numpy(tr.images)
    model = SpritesGrid(o)
    opt = torch.optim.Adam(model.parameters(), lr=o["lr"])
    rng = np.random.default_rng(o["seed"])
    P = model.patch
    ones = torch.ones(1, 1, 64, 64)
    valid_all = model.unfold(model.ring(ones))  # (1, K, P*P)
    log = []
    t0 = time.time()
    for step in range(1, steps + 1):
        frac = min(1.0, step / o["anneal"])
        rho = math.exp((1 - frac) * math.log(0.5) + frac * math.log(o["rho"]))
        kl_w = min(1.0, step / o["warmup"])
        model.background.detail_fraction = min(1.0, step / max(1, o["detail_steps"]))
        progress = (step - 1) / max(1, steps - 1)
        for g in opt.param_groups:
            g["lr"] = o["lr"] * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        idx = torch.from_numpy(rng.integers(0, len(images), o["batch"]))
        x = images[idx].float() / 255
        bgd = model.background(x)
        bg = bgd.image
        cells = model.propose(x, bg.detach())
        probs = torch.sigmoid(cells["logits"])
        z_pres = (torch.rand_like(probs) < probs).float().detach()
        xr = model.unfold(model.ring(x))  # (B, K, 3*P*P)
        bgr = model.unfold(model.ring(bg.detach()))
        valid = valid_all.view(-1, 1, P, P)[: xr.shape[1]]  # (K, 1, P, P)
        B, K = probs.shape
        valid = valid.unsqueeze(0).expand(B, -1, -1, -1, -1).reshape(B * K, 1, P, P)
        with torch.no_grad():
            others = (
                model.unfold(model.fold(cells["patches"], z_pres))
                - z_pres.unsqueeze(-1) * cells["patches"]
            )
            absent = model.patch_loglik(xr, bgr, others, valid)
        present = model.patch_loglik(xr, bgr, others + cells["patches"], valid)
        log_q1, log_q0 = F.logsigmoid(cells["logits"]), F.logsigmoid(-cells["logits"])
        von = present - absent + math.log(rho) + kl_w * (cells["log_p"] - cells["log_q"]) - log_q1
        voff = math.log1p(-rho) - log_q0
        surrogate = (probs * von + (1 - probs) * voff).sum(1)
        # The background's gradient: the whole image's likelihood, the objects as drawn (detached).
        ll_bg = model.log_likelihood(x, bg, cells["patches"].detach(), z_pres)
        loss = -(surrogate + ll_bg + kl_w * bgd.log_weight).mean()
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1e4)
        opt.step()
        if step % 100 == 0:
            acc = (z_pres.sum(1).long() == torch.from_numpy(tr.counts)[idx]).float().mean().item()
            print(
                f"step {step} {time.time() - t0:.0f}s loss {loss.item():.1f} acc {acc:.3f} on {z_pres.sum(1).mean().item():.2f}",
                flush=True,
            )
        if step % o["eval_every"] == 0 or step == steps:
            r = evaluate(model, te, 500 if step < steps else 1000)
            r.update(step=step, seconds=time.time() - t0)
            print(json.dumps(r), flush=True)
            log.append(r)
            torch.save(model.state_dict(), f"{out}.pt")
    json.dump({"opts": o, "log": log}, open(f"{out}.json", "w"), indent=1)


@torch.no_grad()
def evaluate(model, te, n):
    model.eval()
    hits, aris, errs = 0, [], []
    for i0 in range(0, n, 100):
        x = torch.from_numpy(te.images[i0 : i0 + 100]).float() / 255
        bg = model.background(x, sample=False).image
        cells = model.propose(x, bg, sample=False)
        z_pres = (torch.sigmoid(cells["logits"]) > 0.5).float()
        counts = z_pres.sum(1).long().numpy()
        truth = te.counts[i0 : i0 + 100]
        hits += int((counts == truth).sum())
        errs += (counts - truth).tolist()
        seg = model.segmentation(cells, z_pres)
        for b in range(len(x)):
            t = te.segmentation[i0 + b]
            fg = t > 0
            if fg.any():
                aris.append(adjusted_rand_index(t[fg], seg[b][fg]))
    model.train()
    errs = np.array(errs)
    return dict(
        count=hits / n,
        ari=float(np.mean(aris)),
        over=float((errs > 0).mean()),
        under=float((errs < 0).mean()),
    )


if __name__ == "__main__":
    train(sys.argv[1], int(sys.argv[2]), options(sys.argv[3:]))
