#!/usr/bin/env python3
"""Parity of a moe-routes trace against the same model in PyTorch.

    parity_routes.py CKPT TRACE [--tol 1e-3] [--device cpu|cuda] [--ref auto|hf|torch]
    parity_routes.py make-ckpt DIR [--vocab 8192]   # random OLMoE-shaped HF checkpoint

The trace must come from `moe-routes run CKPT ...` (any backend).  Its token
rows are regrouped into documents and forwarded in the same windows as the C
tool (meta.json data.seq_len and window_overlap).  The reference router
logits come from transformers' OlmoeForCausalLM (output_router_logits=True)
when the config is OLMoE-shaped (no dense layers, no shared experts) and
transformers is installed, else from the float64 PyTorch forward below
(the model of lib/model/model.h).  For every token and MoE layer the trace's
top-k ids are compared with the reference top-k; each disagreement is
explained when the reference margin between the k-th and (k+1)-th logit is
at most --tol (a near-tie).  Prints one table row per layer and exits 1 when
a disagreement is not a near-tie.
"""
import argparse
import json
import math
import os
import struct
import sys

import numpy as np
import torch

DT = {"F32": np.float32, "F64": np.float64, "I32": np.int32, "I16": np.int16, "U8": np.uint8,
      "I64": np.int64, "F16": np.float16}


def load_st(path):
    """safetensors -> dict of numpy arrays (BF16 widened to F32)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        hdr = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in hdr.items():
        if k == "__metadata__":
            continue
        b, e = v["data_offsets"]
        raw = data[b:e]
        if v["dtype"] == "BF16":
            a = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
            a = a.view(np.float32)
        else:
            a = np.frombuffer(raw, dtype=DT[v["dtype"]])
        out[k] = a.reshape(v["shape"])
    return out


def load_weights(ckpt):
    idx = os.path.join(ckpt, "model.safetensors.index.json")
    if os.path.exists(idx):
        w = {}
        for fn in sorted(set(json.load(open(idx))["weight_map"].values())):
            w.update(load_st(os.path.join(ckpt, fn)))
        return w
    return load_st(os.path.join(ckpt, "model.safetensors"))


class Ref:
    """The model of lib/model/model.h in float64 PyTorch: returns router logits."""

    def __init__(self, ckpt, device):
        self.c = json.load(open(os.path.join(ckpt, "config.json")))
        w = load_weights(ckpt)
        self.w = {k: torch.tensor(np.array(v, dtype=np.float64), device=device) for k, v in w.items()}
        self.dev = device

    def rms(self, x, w):
        eps = self.c.get("rms_norm_eps", 1e-5)
        return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * w

    def rope(self, x):  # (T, H, Dh), rotate-half
        T, H, Dh = x.shape
        theta = self.c.get("rope_theta", 10000.0)
        inv = theta ** (-torch.arange(0, Dh, 2, dtype=torch.float64, device=self.dev) / Dh)
        ang = torch.arange(T, dtype=torch.float64, device=self.dev)[:, None] * inv[None, :]
        cos = torch.cat([ang.cos(), ang.cos()], -1)[:, None, :]
        sin = torch.cat([ang.sin(), ang.sin()], -1)[:, None, :]
        x1, x2 = x[..., : Dh // 2], x[..., Dh // 2:]
        return x * cos + torch.cat([-x2, x1], -1) * sin

    def mlp(self, x, p):
        g = x @ self.w[p + "gate_proj.weight"].T
        u = x @ self.w[p + "up_proj.weight"].T
        return (torch.nn.functional.silu(g) * u) @ self.w[p + "down_proj.weight"].T

    def forward(self, ids):
        c, w = self.c, self.w
        D, H = c["hidden_size"], c["num_attention_heads"]
        nd = c.get("n_dense_layers", 0) or 0
        E, K = c["num_experts"], c["num_experts_per_tok"]
        x = w["model.embed_tokens.weight"][torch.tensor(ids, device=self.dev)]
        T = x.shape[0]
        mask = torch.full((T, T), float("-inf"), dtype=torch.float64, device=self.dev).triu(1)
        logits = []
        for b in range(c["num_hidden_layers"]):
            p = "model.layers.%d." % b
            a = self.rms(x, w[p + "input_layernorm.weight"])
            q = self.rms(a @ w[p + "self_attn.q_proj.weight"].T, w[p + "self_attn.q_norm.weight"])
            k = self.rms(a @ w[p + "self_attn.k_proj.weight"].T, w[p + "self_attn.k_norm.weight"])
            v = a @ w[p + "self_attn.v_proj.weight"].T
            q, k, v = (t.reshape(T, H, D // H) for t in (q, k, v))
            q, k = self.rope(q), self.rope(k)
            s = torch.einsum("thd,shd->hts", q, k) / math.sqrt(D // H) + mask
            o = torch.einsum("hts,shd->thd", s.softmax(-1), v).reshape(T, D)
            x = x + o @ w[p + "self_attn.o_proj.weight"].T
            m = self.rms(x, w[p + "post_attention_layernorm.weight"])
            if b < nd:
                x = x + self.mlp(m, p + "mlp.")
                continue
            lg = m @ w[p + "mlp.gate.weight"].T  # (T, E)
            logits.append(lg)
            probs = lg.softmax(-1)
            top = lg.topk(K, -1).indices
            tw = probs.gather(-1, top)
            if c.get("norm_topk_prob"):
                tw = tw / tw.sum(-1, keepdim=True)
            y = torch.zeros_like(x)
            for e in range(E):
                rows, slot = (top == e).nonzero(as_tuple=True)
                if len(rows):
                    y[rows] += tw[rows, slot][:, None] * self.mlp(m[rows], p + "mlp.experts.%d." % e)
            for s_ in range(c.get("n_shared_experts", 0) or 0):
                y = y + self.mlp(m, p + "mlp.shared_experts.%d." % s_)
            x = x + y
        return torch.stack(logits)  # (L, T, E)


class HF:
    def __init__(self, ckpt, device):
        from transformers import OlmoeForCausalLM
        self.m = OlmoeForCausalLM.from_pretrained(ckpt, torch_dtype=torch.float32).to(device).eval()
        self.dev = device

    @torch.no_grad()
    def forward(self, ids):
        out = self.m(torch.tensor([ids], device=self.dev), output_router_logits=True)
        return torch.stack([r.double() for r in out.router_logits])  # (L, T, E)


def save_st(path, tensors):
    """numpy dict -> safetensors (F32)."""
    hdr, off, blobs = {"__metadata__": {"format": "pt"}}, 0, []
    for k in sorted(tensors):
        b = np.ascontiguousarray(tensors[k], dtype=np.float32).tobytes()
        hdr[k] = {"dtype": "F32", "shape": list(tensors[k].shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
        blobs.append(b)
    h = json.dumps(hdr).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for b in blobs:
            f.write(b)


def make_ckpt(d, vocab, seed=0):
    """A random OLMoE-shaped checkpoint (HF names and config), loadable by
    moe-routes and by transformers' OlmoeForCausalLM."""
    D, I, H, Lb, E, K = 128, 64, 4, 4, 16, 4
    cfg = {"architectures": ["OlmoeForCausalLM"], "model_type": "olmoe", "vocab_size": vocab,
           "hidden_size": D, "intermediate_size": I, "num_hidden_layers": Lb,
           "num_attention_heads": H, "num_key_value_heads": H, "num_experts": E,
           "num_experts_per_tok": K, "norm_topk_prob": False, "rms_norm_eps": 1e-5,
           "rope_theta": 10000.0, "max_position_embeddings": 256, "initializer_range": 0.1,
           "tie_word_embeddings": False, "hidden_act": "silu", "attention_bias": False,
           "pad_token_id": None, "eos_token_id": 0, "bos_token_id": None}
    rng = np.random.default_rng(seed)
    r = lambda *s: rng.normal(0, 0.1, s)
    t = {"model.embed_tokens.weight": r(vocab, D), "lm_head.weight": r(vocab, D),
         "model.norm.weight": np.ones(D)}
    for b in range(Lb):
        p = "model.layers.%d." % b
        for n in "qkvo":
            t[p + "self_attn.%s_proj.weight" % n] = r(D, D)
        for n in ("self_attn.q_norm", "self_attn.k_norm", "input_layernorm", "post_attention_layernorm"):
            t[p + n + ".weight"] = 1 + 0.1 * r(D)
        t[p + "mlp.gate.weight"] = 5 * r(E, D)
        for e in range(E):
            t[p + "mlp.experts.%d.gate_proj.weight" % e] = r(I, D)
            t[p + "mlp.experts.%d.up_proj.weight" % e] = r(I, D)
            t[p + "mlp.experts.%d.down_proj.weight" % e] = r(D, I)
    os.makedirs(d, exist_ok=True)
    save_st(os.path.join(d, "model.safetensors"), t)
    json.dump(cfg, open(os.path.join(d, "config.json"), "w"), indent=2)
    print("wrote", d)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "make-ckpt":
        ap = argparse.ArgumentParser()
        ap.add_argument("cmd")
        ap.add_argument("dir")
        ap.add_argument("--vocab", type=int, default=8192)
        a = ap.parse_args()
        make_ckpt(a.dir, a.vocab)
        return 0
    ap = argparse.ArgumentParser()
    ap.add_argument("ckpt")
    ap.add_argument("trace")
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--ref", default="auto", choices=["auto", "hf", "torch"])
    a = ap.parse_args()
    cfg = json.load(open(os.path.join(a.ckpt, "config.json")))
    olmoe_shaped = not cfg.get("n_dense_layers") and not cfg.get("n_shared_experts")
    kind = a.ref
    if kind == "auto":
        try:
            import transformers  # noqa: F401
            kind = "hf" if olmoe_shaped else "torch"
        except ImportError:
            kind = "torch"
    ref = HF(a.ckpt, a.device) if kind == "hf" else Ref(a.ckpt, a.device)
    meta = json.load(open(os.path.join(a.trace, "meta.json")))
    tr = load_st(os.path.join(a.trace, "routes.safetensors"))
    ex = tr["topk_experts"].astype(np.int64)
    tw = tr["topk_weights"].astype(np.float64)
    T, L, K = ex.shape
    seq = meta["data"]["seq_len"]
    ov = meta["data"].get("window_overlap", seq // 2)
    doc, tok = tr["doc_index"], tr["token_id"]
    ref_ex = np.zeros_like(ex)
    ref_w = np.zeros_like(tw)
    ref_margin = np.zeros((T, L))
    logit_diff = 0.0
    starts = [0] + [t for t in range(1, T) if doc[t] != doc[t - 1]] + [T]
    for d0, d1 in zip(starts[:-1], starts[1:]):
        ids = tok[d0:d1].tolist()
        n, done = len(ids), 0
        while done < n:
            s = 0 if done == 0 else done - ov
            e = min(s + seq, n)
            with torch.no_grad():
                lg = ref.forward(ids[s:e])  # (L, t, E)
            srt = lg.sort(-1, descending=True)
            for i in range(done, e):
                r = i - s
                row = d0 + i
                vals, idx = srt.values[:, r, :], srt.indices[:, r, :]
                ref_ex[row] = idx[:, :K].cpu().numpy()
                ref_margin[row] = (vals[:, K - 1] - vals[:, K]).cpu().numpy()
                pr = lg[:, r, :].softmax(-1)
                w = pr.gather(-1, idx[:, :K])
                if cfg.get("norm_topk_prob"):
                    w = w / w.sum(-1, keepdim=True)
                ref_w[row] = w.cpu().numpy()
                if "router_logits" in tr:
                    logit_diff = max(logit_diff, float(np.abs(tr["router_logits"][row] - lg[:, r, :].cpu().numpy()).max()))
            done = e
    print("reference: %s on %s; trace %s: %d tokens x %d layers, top-%d; tol %g" %
          ("transformers OlmoeForCausalLM" if kind == "hf" else "float64 PyTorch model", a.device,
           a.trace, T, L, K, a.tol))
    print("%5s %10s %10s %9s %9s %12s %12s" % ("layer", "set_agree", "top1_agr", "disagree", "near_tie",
                                               "max_margin", "max|dw|"))
    bad = 0
    for l in range(L):
        same_set = np.array([set(ex[t, l]) == set(ref_ex[t, l]) for t in range(T)])
        top1 = (ex[:, l, 0] == ref_ex[:, l, 0]).mean()
        dis = np.nonzero(~same_set)[0]
        ties = int((ref_margin[dis, l] <= a.tol).sum())
        bad += len(dis) - ties
        dw = 0.0
        for t in np.nonzero(same_set)[0]:
            m = {e: w for e, w in zip(ref_ex[t, l], ref_w[t, l])}
            dw = max(dw, max(abs(w - m[e]) for e, w in zip(ex[t, l], tw[t, l])))
        mm = ref_margin[dis, l].max() if len(dis) else float("nan")
        print("%5d %9.4f%% %9.4f%% %9d %9d %12.3g %12.3g" % (l, 100 * same_set.mean(), 100 * top1,
                                                          len(dis), ties, mm, dw))
    if "router_logits" in tr:
        print("max |router logit difference| = %.3g" % logit_diff)
    print("PASS" if bad == 0 else "FAIL: %d disagreements with a reference margin above %g" % (bad, a.tol))
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
