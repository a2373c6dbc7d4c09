#!/usr/bin/env python3
"""Train a small x2 SRResNet on CPU and export it to ONNX.

Reference models for tfue-onnx. Everything is offline: the training images are
the sample images that ship inside the scikit-image and scikit-learn wheels.

    python models/build_srresnet.py --variant plain --seed 0 --out models/srresnet_x2.onnx
    python models/build_srresnet.py --variant mcdropout --seed 0 --out models/srresnet_x2_mcdropout.onnx
    python models/build_srresnet.py --variant ensemble --member 2 --out models/srresnet_x2_ensemble_2.onnx

The wider set (models/build_wide.sh): ``--channels 64 --blocks 6`` with
``--out models/srresnet64_x2*.onnx`` (without --out, a width other than 32 or a
depth other than 4 is named ``srresnet{channels}_x2*.onnx`` /
``srresnet{channels}b{blocks}_x2*.onnx``).

Model: input ``input`` float32 [N, 3, H, W] (RGB in [0, 1]), output ``output``
float32 [N, 3, 2H, 2W] (RGB, clipped to [0, 1]). Conv head (C = ``--channels``
ch, default 32), B = ``--blocks`` residual blocks (default 4; conv-ReLU-conv +
skip, no BatchNorm), conv + global (feature) skip, conv to 4C ch +
PixelShuffle(2) + ReLU, conv tail to 3 ch, plus a bilinear x2 upsampling of the
input added to the tail (residual learning), then Clip. The ``mcdropout``
variant has one ``nn.Dropout(p=0.1)`` after block B//2 of B (2 of 4, 3 of 6),
exported as an ONNX ``Dropout`` node that is off at inference (no
training_mode input) so tfue's ``mc-dropout`` can switch it on.

Degradation: the low-resolution image is the high-resolution one (cropped to
even size) downscaled by 2 with PIL ``Image.resize(..., Image.BICUBIC)`` on the
uint8 image, i.e. quantised to uint8 like a real PNG input. Loss: MSE.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

# --- data ----------------------------------------------------------------------
# Train / held-out split and the photo loader: models/sr_data.py (shared with
# tools/table1.py, which needs no torch).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sr_data import HELDOUT_IMAGES, TRAIN_IMAGES, load_image  # noqa: E402,F401


def crop_even(hr: np.ndarray) -> np.ndarray:
    h, w = hr.shape[:2]
    return hr[: h - h % 2, : w - w % 2]


def downscale_x2(hr_u8: np.ndarray) -> np.ndarray:
    """PIL bicubic x1/2 of a uint8 RGB image (even size) -> uint8 RGB."""
    h, w = hr_u8.shape[:2]
    return np.asarray(Image.fromarray(hr_u8).resize((w // 2, h // 2), Image.BICUBIC))


def bicubic_up_x2(lr: np.ndarray) -> np.ndarray:
    """PIL bicubic x2 of a float RGB image in [0, 1], per channel in float ('F' mode)."""
    h, w = lr.shape[:2]
    chans = [np.asarray(Image.fromarray(lr[..., c].astype(np.float32), mode="F")
                        .resize((2 * w, 2 * h), Image.BICUBIC)) for c in range(3)]
    return np.clip(np.stack(chans, axis=-1), 0.0, 1.0)


def pair(name: str):
    """(hr, lr) float32 [H, W, 3] in [0, 1]; lr is the uint8 bicubic downscale."""
    hr = crop_even(load_image(name))
    lr = downscale_x2(hr)
    return hr.astype(np.float32) / 255.0, lr.astype(np.float32) / 255.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10.0 * math.log10(1.0 / mse)


class PatchSampler:
    """Random aligned LR/HR patches with random D4 augmentation."""

    def __init__(self, names, lr_patch: int, rng: np.random.Generator):
        self.pairs = [pair(n) for n in names]
        self.p = lr_patch
        self.rng = rng
        areas = np.array([lr.shape[0] * lr.shape[1] for _, lr in self.pairs], dtype=np.float64)
        areas = np.minimum(areas, np.median(areas))  # big images do not dominate
        self.weights = areas / areas.sum()

    def batch(self, n: int):
        p = self.p
        lrs, hrs = [], []
        while len(lrs) < n:
            hr, lr = self.pairs[self.rng.choice(len(self.pairs), p=self.weights)]
            i = self.rng.integers(0, lr.shape[0] - p + 1)
            j = self.rng.integers(0, lr.shape[1] - p + 1)
            lp = lr[i:i + p, j:j + p]
            hp = hr[2 * i:2 * i + 2 * p, 2 * j:2 * j + 2 * p]
            if hp.std() < 0.02 and self.rng.random() < 0.8:  # mostly skip flat patches
                continue
            k = int(self.rng.integers(0, 4))
            lp, hp = np.rot90(lp, k), np.rot90(hp, k)
            if self.rng.random() < 0.5:
                lp, hp = lp[:, ::-1], hp[:, ::-1]
            lrs.append(lp.transpose(2, 0, 1))
            hrs.append(hp.transpose(2, 0, 1))
        return (torch.from_numpy(np.ascontiguousarray(np.stack(lrs))),
                torch.from_numpy(np.ascontiguousarray(np.stack(hrs))))


# --- model ---------------------------------------------------------------------
class ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(F.relu(self.conv1(x)))


class SRResNet(nn.Module):
    def __init__(self, ch: int = 32, blocks: int = 4, dropout: float = 0.0):
        super().__init__()
        self.head = nn.Conv2d(3, ch, 3, padding=1)
        half = blocks // 2
        body = [ResBlock(ch) for _ in range(half)]
        if dropout > 0:
            body.append(nn.Dropout(p=dropout))
        body += [ResBlock(ch) for _ in range(blocks - half)]
        body.append(nn.Conv2d(ch, ch, 3, padding=1))
        self.body = nn.Sequential(*body)
        self.up = nn.Conv2d(ch, 4 * ch, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)
        self.tail = nn.Conv2d(ch, 3, 3, padding=1)

    def forward(self, x):
        f = F.relu(self.head(x))
        f = f + self.body(f)                      # global skip
        f = F.relu(self.shuffle(self.up(f)))      # x2
        base = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return torch.clamp(self.tail(f) + base, 0.0, 1.0)


# --- evaluation ----------------------------------------------------------------
@torch.no_grad()
def evaluate(model: nn.Module, names) -> dict:
    was = model.training
    model.eval()
    res = {}
    for n in names:
        hr, lr = pair(n)
        sr = model(torch.from_numpy(lr.transpose(2, 0, 1)[None].copy()))[0].numpy().transpose(1, 2, 0)
        res[n] = {"model": psnr(sr, hr), "bicubic": psnr(bicubic_up_x2(lr), hr)}
    res["mean"] = {k: float(np.mean([res[n][k] for n in names])) for k in ("model", "bicubic")}
    model.train(was)
    return res


# --- export --------------------------------------------------------------------
def export(model: SRResNet, path: str, opset: int = 13) -> None:
    import onnx
    model.eval()
    has_dropout = any(isinstance(m, nn.Dropout) for m in model.modules())
    kwargs = {}
    if has_dropout:
        # Keep the Dropout node: export with only the Dropout module in train mode.
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.train()
        kwargs["training"] = torch.onnx.TrainingMode.PRESERVE
    x = torch.rand(1, 3, 24, 24)
    tmp = path + ".tmp"
    torch.onnx.export(model, (x,), tmp, input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {0: "batch", 2: "height", 3: "width"},
                                    "output": {0: "batch", 2: "height2x", 3: "width2x"}},
                      opset_version=opset, dynamo=False, do_constant_folding=True, **kwargs)
    model.eval()
    m = onnx.load(tmp)
    os.remove(tmp)
    drops = [n for n in m.graph.node if n.op_type == "Dropout"]
    if has_dropout:
        if len(drops) != 1:
            raise RuntimeError(f"expected one Dropout node, found {len(drops)}")
        d = drops[0]
        # Drop the training_mode input (defaults to false: identity at inference)
        # and the unused mask output.
        del d.input[2:]
        del d.output[1:]
        d.name = "dropout"
        ratio = {i.name: i for i in m.graph.initializer}.get(d.input[1])
        if ratio is None:
            consts = {n.output[0]: n for n in m.graph.node if n.op_type == "Constant"}
            if d.input[1] not in consts:
                raise RuntimeError("Dropout ratio is not a constant")
        # remove Constant nodes / initializers nothing uses any more
        used = {i for n in m.graph.node for i in n.input} | {o.name for o in m.graph.output}
        keep = [n for n in m.graph.node if n.op_type != "Constant" or n.output[0] in used]
        del m.graph.node[:]
        m.graph.node.extend(keep)
        inits = [i for i in m.graph.initializer if i.name in used]
        del m.graph.initializer[:]
        m.graph.initializer.extend(inits)
    elif drops:
        raise RuntimeError("plain model exported with a Dropout node")
    m.doc_string = "tfue-onnx reference SRResNet x2 (models/build_srresnet.py)"
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", choices=["plain", "mcdropout", "ensemble"], default="plain")
    ap.add_argument("--member", type=int, default=0, help="ensemble member index K")
    ap.add_argument("--seed", type=int, default=None,
                    help="default: 0 (plain, mcdropout), 10+K (ensemble member K)")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--patch", type=int, default=32, help="LR patch size")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--channels", type=int, default=32, help="feature width C")
    ap.add_argument("--blocks", type=int, default=4,
                    help="residual blocks B (mcdropout: Dropout after block B//2)")
    ap.add_argument("--dropout", type=float, default=0.1, help="mcdropout rate")
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--train-images", default=None,
                    help="comma-separated override of TRAIN_IMAGES (e.g. skimage:astronaut,sklearn:china.jpg)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--ref", default=None,
                    help="also write a .npz (held-out LR input, torch output, HR) for check_onnx.py")
    a = ap.parse_args(argv)

    seed = a.seed if a.seed is not None else (10 + a.member if a.variant == "ensemble" else 0)
    stem = "srresnet" + ("" if a.channels == 32 else str(a.channels)) + (
        "" if a.blocks == 4 else f"b{a.blocks}")
    out = a.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), {
        "plain": f"{stem}_x2.onnx", "mcdropout": f"{stem}_x2_mcdropout.onnx",
        "ensemble": f"{stem}_x2_ensemble_{a.member}.onnx"}[a.variant])
    torch.set_num_threads(a.threads)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(seed)

    model = SRResNet(a.channels, a.blocks, a.dropout if a.variant == "mcdropout" else 0.0)
    train = a.train_images.split(",") if a.train_images else TRAIN_IMAGES
    if set(train) & set(HELDOUT_IMAGES) or "skimage:cat" in train:
        raise SystemExit("held-out images cannot be trained on")
    sampler = PatchSampler(train, a.patch, rng)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, a.steps) / a.steps)) * 0.99 + 0.01)
    log = lambda *x: print(*x, flush=True)
    log(f"variant={a.variant} member={a.member} seed={seed} steps={a.steps} batch={a.batch} "
        f"channels={a.channels} blocks={a.blocks} "
        f"patch={a.patch} params={sum(p.numel() for p in model.parameters())} out={out}")
    t0 = time.time()
    run = 0.0
    model.train()
    for step in range(1, a.steps + 1):
        lr_b, hr_b = sampler.batch(a.batch)
        loss = F.mse_loss(model(lr_b), hr_b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        run = 0.98 * run + 0.02 * loss.item() if step > 1 else loss.item()
        if step % 100 == 0:
            log(f"step {step} loss {run:.6f} ({time.time() - t0:.0f}s)")
        if step % a.eval_every == 0 or step == a.steps:
            res = evaluate(model, HELDOUT_IMAGES)
            ev = res["mean"]
            per = " ".join(f"{n.split(':')[1]} {res[n]['model'] - res[n]['bicubic']:+.2f}"
                           for n in HELDOUT_IMAGES)
            log(f"step {step} held-out PSNR model {ev['model']:.3f} dB bicubic {ev['bicubic']:.3f} dB "
                f"({ev['model'] - ev['bicubic']:+.3f}; {per})")
    train_s = time.time() - t0
    ev = evaluate(model, HELDOUT_IMAGES)
    export(model, out)
    if a.ref:
        hr, lr = pair(HELDOUT_IMAGES[0])
        with torch.no_grad():
            model.eval()
            y = model(torch.from_numpy(lr.transpose(2, 0, 1)[None].copy())).numpy()
        np.savez_compressed(a.ref, input=lr.transpose(2, 0, 1)[None], output=y,
                            hr=hr.transpose(2, 0, 1)[None])
    summary = {"variant": a.variant, "member": a.member, "seed": seed, "steps": a.steps,
               "channels": a.channels, "blocks": a.blocks,
               "train_seconds": round(train_s, 1), "out": out,
               "onnx_bytes": os.path.getsize(out), "heldout_psnr": ev}
    log("SUMMARY " + json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
