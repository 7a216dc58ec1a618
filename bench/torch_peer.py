#!/usr/bin/python3
"""PyTorch-eager peer of the engine's ViT-B/32 pixel-gradient step (bench/engine.ts spawns it).

Same math as gpu-worker/engine/clip/model.ts + graphs.ts imageGradientGraph: pixels [V,3,224,224] in
[0,1] -> (x - mean)/std -> patch conv (no bias) -> class token + positional embedding -> ln_pre ->
12 pre-LN blocks (nn.MultiheadAttention math, QuickGELU MLP) -> ln_post(cls) @ proj; objective
sum_v w_v * cos(f_v, t_v); backward to the pixels only (weights have requires_grad=False).
Random weights N(0, 0.02), LN 1/0, biases 0, fixed seed. float32, torch.set_num_threads(threads).
Needs Debian's python3-torch and libopenblas0-openmp (LD_LIBRARY_PATH set by the caller).
Prints one JSON line: {"ms": median fwd+grad, "fwd_ms": median forward under no_grad, ...}.
"""
import argparse
import json
import statistics
import sys
import time

try:
    import torch
    import torch.nn.functional as F
except Exception as e:  # noqa: BLE001
    print(json.dumps({"available": False, "reason": f"import torch failed: {e}"}))
    sys.exit(0)

ap = argparse.ArgumentParser()
ap.add_argument("--views", type=int, default=8)
ap.add_argument("--reps", type=int, default=7)
ap.add_argument("--warmup", type=int, default=2)
ap.add_argument("--threads", type=int, default=2)
args = ap.parse_args()

torch.set_num_threads(args.threads)
torch.manual_seed(1234)
V, R, P, D, L, H, E = args.views, 224, 32, 768, 12, 12, 512
G = R // P
MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


def n(*shape):
    return torch.randn(*shape) * 0.02


W = {
    "conv": n(D, 3, P, P),
    "cls": n(D),
    "pos": n(G * G + 1, D),
    "ln_pre": (torch.ones(D), torch.zeros(D)),
    "ln_post": (torch.ones(D), torch.zeros(D)),
    "proj": n(D, E),
    "blocks": [
        {
            "ln_1": (torch.ones(D), torch.zeros(D)),
            "in_w": n(3 * D, D), "in_b": torch.zeros(3 * D),
            "out_w": n(D, D), "out_b": torch.zeros(D),
            "ln_2": (torch.ones(D), torch.zeros(D)),
            "fc_w": n(4 * D, D), "fc_b": torch.zeros(4 * D),
            "proj_w": n(D, 4 * D), "proj_b": torch.zeros(D),
        }
        for _ in range(L)
    ],
}


def block(x, w):
    B, T, _ = x.shape
    h = F.layer_norm(x, (D,), *w["ln_1"], eps=1e-5)
    q, k, v = F.linear(h, w["in_w"], w["in_b"]).split(D, dim=-1)
    hd = D // H
    q = (q * hd ** -0.5).reshape(B, T, H, hd).transpose(1, 2)
    k = k.reshape(B, T, H, hd).transpose(1, 2)
    v = v.reshape(B, T, H, hd).transpose(1, 2)
    a = torch.softmax(q @ k.transpose(-1, -2), dim=-1)
    o = (a @ v).transpose(1, 2).reshape(B, T, D)
    x = x + F.linear(o, w["out_w"], w["out_b"])
    h = F.layer_norm(x, (D,), *w["ln_2"], eps=1e-5)
    u = F.linear(h, w["fc_w"], w["fc_b"])
    u = u * torch.sigmoid(1.702 * u)
    return x + F.linear(u, w["proj_w"], w["proj_b"])


def encode(px):
    x = (px - MEAN) / STD
    x = F.conv2d(x, W["conv"], stride=P)  # [B, D, G, G]
    x = x.reshape(x.shape[0], D, G * G).permute(0, 2, 1)
    x = torch.cat([W["cls"].view(1, 1, D).expand(x.shape[0], 1, D), x], dim=1) + W["pos"]
    x = F.layer_norm(x, (D,), *W["ln_pre"], eps=1e-5)
    for w in W["blocks"]:
        x = block(x, w)
    return F.layer_norm(x[:, 0, :], (D,), *W["ln_post"], eps=1e-5) @ W["proj"]


pixels0 = torch.rand(V, 3, R, R)
targets = F.normalize(torch.randn(V, E), dim=-1)
weights = torch.tensor([5.0 if i % 2 else 1.0 for i in range(V)])


def step():
    px = pixels0.clone().requires_grad_(True)
    f = encode(px)
    cos = (F.normalize(f, dim=-1) * targets).sum(-1)
    (cos * weights).sum().backward()
    return px.grad


def fwd():
    with torch.no_grad():
        return encode(pixels0)


def timed(fn, warmup, reps):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1000)
    return ts


runs = timed(step, args.warmup, args.reps)
fwd_runs = timed(fwd, 1, max(3, args.reps // 2))
med = statistics.median(runs)
with open("/proc/self/maps") as fh:
    libs = {ln.split()[-1] for ln in fh if ".so" in ln}
blas = ", ".join(sorted({l for l in libs if "blas" in l.lower()})) or "unknown"
print(json.dumps({
    "available": True,
    "ms": med,
    "fwd_ms": statistics.median(fwd_runs),
    "runs": [round(t, 1) for t in runs],
    "spread": round((max(runs) - min(runs)) / med, 3),
    "torch": torch.__version__,
    "blas": blas,
    "threads": torch.get_num_threads(),
}))
