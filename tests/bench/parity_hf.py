#!/usr/bin/env python3
"""Parity of lib/model (CPU, fp32) with transformers' OlmoeForCausalLM and with
an independent PyTorch implementation of the same equations.

Each case directory is written by tests/model/dump_ref: config.json and
model.safetensors (our checkpoint, HF OLMoE names) plus ref.safetensors (the
tokens, targets, our logits, loss parts, routing and the gradient of the total
loss after one backward).

  python3 parity_hf.py --build BUILDDIR [--src SRCDIR]   # runs dump_ref on tests/bench/parity/*.json
  python3 parity_hf.py CASE_DIR [CASE_DIR ...]

For every case the independent implementation ("torch") is compared; for
OLMoE-shaped cases (no shared experts, no dense layers, no selection bias,
aux form "switch") transformers' OlmoeForCausalLM ("hf") is compared too.
Pass: logits, CE and total loss relative error < 1e-4; gradients: norm-wise
relative error of every tensor < 1e-4 (reported with the worst tensor).
Exit status 0 when every comparison passes, 1 otherwise.
"""
import argparse
import glob
import json
import math
import os
import subprocess
import sys
import tempfile

import struct

import torch
import torch.nn.functional as F

try:
    from safetensors.torch import load_file
except ImportError:  # a minimal reader, enough for the files dump_ref writes
    _DT = {"F32": torch.float32, "F64": torch.float64, "I32": torch.int32, "I64": torch.int64,
           "BF16": torch.bfloat16, "F16": torch.float16}

    def load_file(path):
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            hdr = json.loads(f.read(n))
            data = bytearray(f.read())
        out = {}
        for k, v in hdr.items():
            if k == "__metadata__":
                continue
            b, e = v["data_offsets"]
            t = torch.frombuffer(data[b:e], dtype=_DT[v["dtype"]]) if e > b else torch.empty(0, dtype=_DT[v["dtype"]])
            out[k] = t.reshape(v["shape"]).clone()
        return out

TOL = 1e-4


def rel(a, b):
    a = a.double()
    b = b.double()
    d = (a - b).norm().item()
    n = b.norm().item()
    return d / n if n > 0 else d


# ---------------------------------------------------------------- independent implementation


def rms(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rope(x, theta):  # x (B, T, H, Dh), rotate-half
    B, T, H, Dh = x.shape
    inv = 1.0 / (theta ** (torch.arange(0, Dh, 2, dtype=torch.int64).float() / Dh))
    f = torch.outer(torch.arange(T, dtype=torch.float32), inv)
    emb = torch.cat([f, f], -1)
    cos, sin = emb.cos()[None, :, None, :], emb.sin()[None, :, None, :]
    rot = torch.cat([-x[..., Dh // 2:], x[..., :Dh // 2]], -1)
    return x * cos + rot * sin


def swiglu(x, g, u, d):
    return F.linear(F.silu(F.linear(x, g)) * F.linear(x, u), d)


def attention(q, k, v):  # (B, T, H, Dh), causal, explicit
    B, T, H, Dh = q.shape
    s = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(Dh)
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    s = s.masked_fill(~mask, float("-inf"))
    p = torch.softmax(s, -1)
    return torch.einsum("bhts,bshd->bthd", p, v)


def ours_forward(cfg, P, tokens, targets, aux_coef):
    V, D, H = cfg["vocab_size"], cfg["hidden_size"], cfg["num_attention_heads"]
    L, nd = cfg["num_hidden_layers"], cfg.get("n_dense_layers", 0)
    E, K = cfg["num_experts"], cfg["num_experts_per_tok"]
    eps, theta = cfg["rms_norm_eps"], cfg["rope_theta"]
    S = cfg.get("n_shared_experts", 0)
    pad = cfg.get("pad_token_id")
    use_bias = cfg.get("loss_free_balancing", False)
    B, T = tokens.shape
    N, Dh = B * T, D // H
    x = F.embedding(tokens, P["model.embed_tokens.weight"], padding_idx=pad)
    routers = []
    for l in range(L):
        p = "model.layers.%d." % l
        h = rms(x, P[p + "input_layernorm.weight"], eps)
        q = rms(F.linear(h, P[p + "self_attn.q_proj.weight"]), P[p + "self_attn.q_norm.weight"], eps)
        k = rms(F.linear(h, P[p + "self_attn.k_proj.weight"]), P[p + "self_attn.k_norm.weight"], eps)
        v = F.linear(h, P[p + "self_attn.v_proj.weight"])
        q, k, v = (t.view(B, T, H, Dh) for t in (q, k, v))
        a = attention(rope(q, theta), rope(k, theta), v).reshape(B, T, D)
        x = x + F.linear(a, P[p + "self_attn.o_proj.weight"])
        h = rms(x, P[p + "post_attention_layernorm.weight"], eps)
        if l < nd:
            x = x + swiglu(h, P[p + "mlp.gate_proj.weight"], P[p + "mlp.up_proj.weight"],
                           P[p + "mlp.down_proj.weight"])
            continue
        hn = h.reshape(N, D)
        z = F.linear(hn, P[p + "mlp.gate.weight"])
        probs = torch.softmax(z.float(), -1)
        score = (z + P[p + "mlp.selection_bias"]) if use_bias else probs
        sel = torch.topk(score.detach(), K, -1).indices
        w = probs.gather(1, sel)
        if cfg.get("norm_topk_prob", False):
            w = w / w.sum(-1, keepdim=True)
        y = torch.zeros_like(hn)
        for e in range(E):  # every expert on every token, weighted by its gate (0 if not chosen)
            ge = (w * (sel == e)).sum(-1, keepdim=True)
            pe = p + "mlp.experts.%d." % e
            y = y + ge * swiglu(hn, P[pe + "gate_proj.weight"], P[pe + "up_proj.weight"], P[pe + "down_proj.weight"])
        for s in range(S):
            ps = p + "mlp.shared_experts.%d." % s
            y = y + swiglu(hn, P[ps + "gate_proj.weight"], P[ps + "up_proj.weight"], P[ps + "down_proj.weight"])
        x = x + y.view(B, T, D)
        top = torch.topk(score.detach(), min(K + 1, E), -1).values
        margin = top[:, K - 1] - top[:, K] if K < E else torch.full((N,), float("inf"))
        routers.append((z, probs, sel, margin))
    x = rms(x, P["model.norm.weight"], eps)
    logits = F.linear(x, P["lm_head.weight"])
    ign = pad if pad is not None else -100
    ce = F.cross_entropy(logits.reshape(N, V), targets.reshape(N).long(), ignore_index=ign)
    aux, zl = router_losses(cfg, [r[:3] for r in routers], tokens)
    total = ce + aux_coef * aux + cfg.get("router_z_loss_coef", 0.0) * zl
    return logits, ce, aux, zl, total, [(r[2], r[3]) for r in routers]


def router_losses(cfg, routers, tokens):
    """aux in the configured form and z, from per-layer (logits, probs, sel)."""
    E, K = cfg["num_experts"], cfg["num_experts_per_tok"]
    pad = cfg.get("pad_token_id")
    flat = tokens.reshape(-1)
    valid = (flat != pad) if pad is not None else torch.ones_like(flat, dtype=torch.bool)
    Tv = valid.sum().double()
    Lm = len(routers)
    zl = sum(torch.logsumexp(z.float(), -1).pow(2).mean() for z, _, _ in routers)
    if Lm == 0:
        return torch.tensor(0.0), torch.tensor(0.0)
    cnts = [F.one_hot(sel[valid], E).sum((0, 1)).double() for _, _, sel in routers]
    psums = [probs[valid].sum(0).double() for _, probs, _ in routers]
    if cfg.get("aux_loss_form", "switch") == "switch":
        R = Tv * Lm
        aux = E * ((sum(cnts) / R) * (sum(psums) / R)).sum()
    else:
        aux = sum(E / (Tv * K) * (c * (ps / Tv)).sum() for c, ps in zip(cnts, psums)) / Lm
    return aux.float(), zl


# ---------------------------------------------------------------- transformers


def hf_grads_to_ours(model, cfg):
    """named gradients of an OlmoeForCausalLM in our (v4 per-expert) names."""
    I, E = cfg["intermediate_size"], cfg["num_experts"]
    out = {}
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        g = p.grad
        if name.endswith("mlp.experts.gate_up_proj"):  # transformers v5 fused layout
            pre = name[: -len("gate_up_proj")]
            if g.shape[1] != 2 * I:
                g = g.transpose(1, 2)
            for e in range(E):
                out["%s%d.gate_proj.weight" % (pre, e)] = g[e, :I]
                out["%s%d.up_proj.weight" % (pre, e)] = g[e, I:]
        elif name.endswith("mlp.experts.down_proj"):
            pre = name[: -len("down_proj")]
            if g.shape[1] != cfg["hidden_size"]:
                g = g.transpose(1, 2)
            for e in range(E):
                out["%s%d.down_proj.weight" % (pre, e)] = g[e]
        else:
            out[name] = g
    return out


def run_hf(d, cfg, ref, aux_coef):
    from transformers import OlmoeForCausalLM
    try:
        model = OlmoeForCausalLM.from_pretrained(d, torch_dtype=torch.float32, attn_implementation="eager")
    except TypeError:
        model = OlmoeForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
    model.train()  # OLMoE has no dropout
    # router logits from each gate's input and weight (robust to how the
    # transformers version packages its router outputs)
    captured = []

    def hook(mod, inp, out):
        x = inp[0]
        captured.append(F.linear(x.reshape(-1, x.shape[-1]), mod.weight))

    hooks = [layer.mlp.gate.register_forward_hook(hook) for layer in model.model.layers]
    tokens, targets = ref["tokens"].long(), ref["targets"].long()
    out = model(input_ids=tokens, output_router_logits=True)
    for h in hooks:
        h.remove()
    logits = out.logits
    N, V = tokens.numel(), cfg["vocab_size"]
    pad = cfg.get("pad_token_id")
    ce = F.cross_entropy(logits.reshape(N, V), targets.reshape(N), ignore_index=pad if pad is not None else -100)
    routers = []
    for z in captured:
        probs = torch.softmax(z.float(), -1)
        routers.append((z, probs, torch.topk(probs.detach(), cfg["num_experts_per_tok"], -1).indices))
    aux, zl = router_losses(cfg, routers, tokens)
    # transformers' own aux function (v4 API), where it exists, must agree with ours
    hf_aux = None
    try:
        import transformers
        if int(transformers.__version__.split(".")[0]) < 5:
            from transformers.models.olmoe.modeling_olmoe import load_balancing_loss_func
            mask = (tokens != pad).long() if pad is not None else None
            hf_aux = load_balancing_loss_func(out.router_logits, cfg["num_experts"], cfg["num_experts_per_tok"], mask)
    except Exception as e:  # noqa: BLE001
        print("  (transformers load_balancing_loss_func not used: %s)" % e)
    total = ce + aux_coef * aux + cfg.get("router_z_loss_coef", 0.0) * zl
    total.backward()
    return logits.detach(), ce.detach(), aux.detach(), zl.detach(), total.detach(), hf_grads_to_ours(model, cfg), hf_aux


# ---------------------------------------------------------------- comparison


def compare(label, cfg, ref, logits, ce, aux, zl, total, grads, sels=None):
    L = ref["losses"].double()
    res = {
        "logits": rel(logits.reshape(ref["logits"].shape), ref["logits"]),
        "ce": abs(ce.item() - L[1].item()) / abs(L[1].item()),
        "aux": abs(aux.item() - L[2].item()) / max(abs(L[2].item()), 1e-30),
        "z": abs(zl.item() - L[3].item()) / max(abs(L[3].item()), 1e-30),
        "total": abs(total.item() - L[0].item()) / abs(L[0].item()),
    }
    worst, worst_name, missing = 0.0, "-", []
    for k in ref:
        if not k.startswith("grad."):
            continue
        name = k[5:]
        if name not in grads:
            missing.append(name)
            continue
        r = rel(grads[name], ref[k])
        if r > worst:
            worst, worst_name = r, name
    res["grad"] = worst
    route_ok, ties = True, 0
    if sels is not None and "topk_idx" in ref:
        for lm, (sel, margin) in enumerate(sels):
            a = torch.sort(sel, -1).values
            b = torch.sort(ref["topk_idx"][lm].long(), -1).values
            clear = margin > 1e-6  # exact ties (e.g. the zero embedding of a pad) may break either way
            ties += int((~clear).sum())
            route_ok &= bool(torch.equal(a[clear], b[clear]))
    ok = all(v < TOL for v in res.values()) and not missing and route_ok
    print("  %-6s logits %.2e  ce %.2e  aux %.2e  z %.2e  total %.2e  grad %.2e (%s)  routing %s  %s" % (
        label, res["logits"], res["ce"], res["aux"], res["z"], res["total"], res["grad"], worst_name,
        ("same" if route_ok else "DIFFERENT") + (" (%d tied rows skipped)" % ties if ties else ""),
        "PASS" if ok else "FAIL"))
    if missing:
        print("  %-6s missing gradients for %d tensors, e.g. %s" % (label, len(missing), missing[0]))
    return ok


def run_case(d):
    cfg = json.load(open(os.path.join(d, "config.json")))
    ref = load_file(os.path.join(d, "ref.safetensors"))
    params = load_file(os.path.join(d, "model.safetensors"))
    aux_coef = ref["losses"][4].item()
    print("%s: V %d D %d L %d (dense %d) E %d K %d shared %d lflb %s aux %s norm_topk %s" % (
        d, cfg["vocab_size"], cfg["hidden_size"], cfg["num_hidden_layers"], cfg.get("n_dense_layers", 0),
        cfg["num_experts"], cfg["num_experts_per_tok"], cfg.get("n_shared_experts", 0),
        cfg.get("loss_free_balancing"), cfg.get("aux_loss_form"), cfg.get("norm_topk_prob")))
    P = {k: v.clone().requires_grad_(not k.endswith("selection_bias")) for k, v in params.items()}
    logits, ce, aux, zl, total, sels = ours_forward(cfg, P, ref["tokens"].long(), ref["targets"].long(), aux_coef)
    total.backward()
    grads = {k: v.grad for k, v in P.items() if v.grad is not None}
    ok = compare("torch", cfg, ref, logits.detach(), ce.detach(), aux.detach(), zl.detach(), total.detach(), grads, sels)
    olmoe_shaped = (cfg.get("n_shared_experts", 0) == 0 and cfg.get("n_dense_layers", 0) == 0
                    and not cfg.get("loss_free_balancing") and cfg.get("aux_loss_form", "switch") == "switch")
    if olmoe_shaped:
        try:
            import transformers
            print("  transformers %s" % transformers.__version__)
        except ImportError:
            print("  hf     transformers not installed: SKIP")
            return ok
        lg, c, a, z, t, g, hf_aux = run_hf(d, cfg, ref, aux_coef)
        ok &= compare("hf", cfg, ref, lg, c, a, z, t, g)
        if hf_aux is not None:
            r = abs(hf_aux.item() - ref["losses"][2].item()) / abs(ref["losses"][2].item())
            print("  hf     load_balancing_loss_func %.6f vs ours %.6f: rel %.2e %s" % (
                hf_aux.item(), ref["losses"][2].item(), r, "PASS" if r < TOL else "FAIL"))
            ok &= r < TOL
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cases", nargs="*")
    ap.add_argument("--build", help="build directory with tests/model/dump_ref: make the cases first")
    ap.add_argument("--src", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    ap.add_argument("--out", help="where --build writes the cases (default: a temporary directory)")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_grad_enabled(True)
    if hasattr(torch.backends, "cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False
    cases = list(args.cases)
    if args.build:
        out = args.out or tempfile.mkdtemp(prefix="moe-parity.")
        for cfgf in sorted(glob.glob(os.path.join(args.src, "tests", "bench", "parity", "*.json"))):
            name = os.path.splitext(os.path.basename(cfgf))[0]
            d = os.path.join(out, name)
            cmd = [os.path.join(args.build, "tests", "model", "dump_ref"), "-c", cfgf, "-o", d, "-b", "2", "-t", "16"]
            if "ext" in name:
                cmd += ["--bias-scale", "0.05"]
            subprocess.run(cmd, check=True)
            cases.append(d)
    if not cases:
        ap.error("no cases (give CASE_DIRs or --build BUILDDIR)")
    ok = True
    for d in cases:
        ok &= run_case(d)
    print("parity: %s" % ("all PASS" if ok else "FAIL"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
