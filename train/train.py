#!/usr/bin/env python3
"""Train moeflux-tiny-kjv: a small Qwen3.5-MoE (qwen3_5_moe_text) model on the King James Bible.

Runs on the GPU machine (Python 3.12, torch 2.11 + CUDA, transformers 5.17, tokenizers 0.23,
safetensors; no network). Input: the corpus written by train/make_corpus.sh. Steps:

  (a) byte-level BPE tokenizer in the Qwen2 style (NFC, Qwen2 split regex + ByteLevel), trained on
      the train split; special tokens <|endoftext|> <|im_start|> <|im_end|>, added <think> </think>;
      tokenizer.json, tokenizer_config.json (ChatML chat_template), generation_config.json
  (b) Qwen3_5MoeForCausalLM from a Qwen3_5MoeTextConfig: Gated DeltaNet + gated full attention,
      32 routed experts (top-4) + shared expert, partial rotary 0.25, tied embeddings; every matrix
      input dimension a multiple of 64; <= 22 MB in bf16
  (c) training: AdamW, cosine schedule, bf16 autocast over float32 master weights, sequence length
      512, residual dropout (training only, through forward hooks), a Switch-style load-balancing
      loss per MoE layer on the router outputs; 1/8 of the rows are ChatML "continue the verse"
      conversations made from train verses; the best step by validation NLL is kept
  (d) save_pretrained(max_shard_size="10MB") in bf16 + tokenizer files
  (e) held-out perplexity by transformers on the saved bf16 weights loaded back (float32 compute,
      eager attention and experts, no cache, non-overlapping 256-token windows) -> heldout_eval.json;
      greedy samples -> samples.txt / samples.json

    python3 train/train.py --data train/data --work /tmp/kjv [--train-seconds 290]

Everything lands in --work: hf/ (the checkpoint), heldout_eval.json, samples.txt, samples.json,
train_log.json. See train/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time

import torch
import torch.nn.functional as F

import transformers
import tokenizers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

MODEL_NAME = "moeflux-tiny-kjv"
SEED = 1611
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
ADDED = ["<think>", "</think>"]
VOCAB = 8192  # BPE vocabulary incl. the 256 byte symbols and the 5 added tokens
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# (b) the model. All matrix input dims are multiples of 64: hidden 192, experts 64, shared 128,
# attention heads*head_dim 256, linear-attention value dim 4*64 = 256.
MODEL_CONFIG = {
    "architectures": ["Qwen3_5MoeForCausalLM"],
    "model_type": "qwen3_5_moe_text",
    "vocab_size": VOCAB,
    "hidden_size": 192,
    "num_hidden_layers": 6,
    "full_attention_interval": 3,          # layers 2 and 5 full attention, the others Gated DeltaNet
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "linear_num_key_heads": 2,
    "linear_key_head_dim": 64,
    "linear_num_value_heads": 4,
    "linear_value_head_dim": 64,
    "linear_conv_kernel_dim": 4,
    "num_experts": 32,
    "num_experts_per_tok": 4,
    "moe_intermediate_size": 64,
    "shared_expert_intermediate_size": 128,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
    "max_position_embeddings": 4096,
    "initializer_range": 0.02,
    "tie_word_embeddings": True,
    "output_router_logits": False,
    "router_aux_loss_coef": 0.01,
    "use_cache": True,
    "mamba_ssm_dtype": "float32",
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def read_split(data_dir: str, name: str) -> list[dict]:
    with open(os.path.join(data_dir, f"kjv_{name}.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


# =====================================================================================
# (a) tokenizer
# =====================================================================================


def train_tokenizer(texts: list[str]) -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    try:
        tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    except Exception:  # noqa: BLE001  (older bindings take trim_offsets only)
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    n_added = len(SPECIAL) + len(ADDED)
    trainer = trainers.BpeTrainer(vocab_size=VOCAB - n_added, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(texts, trainer=trainer)
    base = tok.get_vocab_size(with_added_tokens=False)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in ADDED])
    log(f"tokenizer: {base} BPE tokens (256 bytes + {base - 256} merges) + {n_added} added = "
        f"{tok.get_vocab_size()}; ids " + ", ".join(f"{t}={tok.token_to_id(t)}" for t in SPECIAL + ADDED))
    return tok


def write_tokenizer_files(tok: Tokenizer, out: str) -> dict:
    os.makedirs(out, exist_ok=True)
    tok.save(os.path.join(out, "tokenizer.json"))
    ids = {t: tok.token_to_id(t) for t in SPECIAL + ADDED}
    added = {}
    for t in SPECIAL + ADDED:
        added[str(ids[t])] = {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                              "single_word": False, "special": t in SPECIAL}
    cfg = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 4096,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": None,
    }
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    return ids


def write_generation_config(out: str, ids: dict) -> None:
    gen = {
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
        "pad_token_id": ids["<|endoftext|>"],
        "do_sample": True,
        "temperature": 0.8,
        "top_k": 40,
        "top_p": 0.95,
        "transformers_version": transformers.__version__,
    }
    with open(os.path.join(out, "generation_config.json"), "w") as f:
        json.dump(gen, f, indent=2)


def encode_books(tok: Tokenizer, books: list[dict], eot: int) -> list[int]:
    """Books' texts tokenized one by one and joined by <|endoftext|> (== encoding the texts joined by
    the literal '<|endoftext|>', checked in main)."""
    encs = tok.encode_batch([b["text"] for b in books])
    ids: list[int] = []
    for i, e in enumerate(encs):
        if i:
            ids.append(eot)
        ids.extend(e.ids)
    return ids


def chat_stream(tok: Tokenizer, books: list[dict], eot: int, rng: random.Random) -> list[int]:
    """ChatML conversations: the user gives the opening words of a train verse, the assistant answers
    with the whole verse. Teaches the chat format and <|im_end|>; no new text."""
    verses = [v for b in books for v in b["text"].split("\n") if v.strip()]
    rng.shuffle(verses)
    convs = []
    for v in verses:
        words = v.split(" ")
        k = max(2, min(8, len(words) // 3))
        prompt = " ".join(words[:k]).rstrip(",;:")
        convs.append(f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n{v}<|im_end|>\n")
    ids: list[int] = []
    for e in tok.encode_batch(convs):
        ids.extend(e.ids)
        ids.append(eot)
    return ids


# =====================================================================================
# (b) model
# =====================================================================================


def build_config(work: str, vocab: int, ids: dict):
    cfg = dict(MODEL_CONFIG)
    cfg["vocab_size"] = vocab
    cfg["bos_token_id"] = ids["<|endoftext|>"]
    cfg["eos_token_id"] = ids["<|endoftext|>"]
    cfg["pad_token_id"] = ids["<|endoftext|>"]
    d = os.path.join(work, "_config")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    config = transformers.AutoConfig.from_pretrained(d)
    log(f"config class {type(config).__name__}, layer_types {config.layer_types}")
    return config


def build_model(config):
    cls = transformers.Qwen3_5MoeForCausalLM
    last = None
    for kw in ({"attn_implementation": "sdpa", "experts_implementation": "eager", "dtype": torch.float32},
               {"attn_implementation": "sdpa", "dtype": torch.float32},
               {"attn_implementation": "sdpa", "torch_dtype": torch.float32},
               {}):
        try:
            model = cls._from_config(config, **kw)
            log(f"built {cls.__name__} with {list(kw)}")
            break
        except Exception as e:  # noqa: BLE001
            last = e
            log(f"note: _from_config({list(kw)}) failed: {e!r}")
    else:
        raise last
    force_impl(model, attn="sdpa")
    return model.float()


def force_impl(model, attn: str) -> None:
    for meth, val in (("set_attn_implementation", attn), ("set_experts_implementation", "eager")):
        if hasattr(model, meth):
            try:
                getattr(model, meth)(val)
            except Exception as e:  # noqa: BLE001
                log(f"note: {meth}({val!r}) failed: {e!r}")
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and getattr(cfg, "_experts_implementation", "eager") not in (None, "eager"):
            try:
                cfg._experts_implementation = "eager"
            except Exception as e:  # noqa: BLE001
                log(f"note: setting _experts_implementation failed: {e!r}")


def count_params(model) -> dict:
    total = sum(p.numel() for p in model.parameters())  # tied weights counted once
    routed = sum(p.numel() for n, p in model.named_parameters() if ".mlp.experts." in n)
    emb = model.get_input_embeddings().weight.numel()
    c = model.config
    per_expert = 3 * c.hidden_size * c.moe_intermediate_size
    moe_layers = sum(1 for n, _ in model.named_parameters() if n.endswith(".mlp.experts.down_proj")) or \
        c.num_hidden_layers
    active = total - routed + moe_layers * c.num_experts_per_tok * per_expert
    return {"total": total, "routed_experts": routed, "embedding_tied": emb, "per_expert": per_expert,
            "active_per_token": active, "non_embedding_active": active - emb, "bf16_bytes": 2 * total}


def routers(model) -> list:
    out = []
    for i, layer in enumerate(model.model.layers):
        mlp = getattr(layer, "mlp", None)
        if mlp is not None and hasattr(mlp, "gate"):
            out.append((i, mlp.gate))
    return out


def router_parts(output, top_k: int):
    """(logits [N,E], indices [N,k] or None, weights [N,k] or None) from a router module's output."""
    if isinstance(output, tuple):
        logits = output[0]
        idx = output[2] if len(output) >= 3 and not output[2].is_floating_point() else None
        w = output[1] if len(output) >= 3 and output[1].is_floating_point() else None
    else:
        logits, idx, w = output, None, None
    if idx is None:
        idx = torch.topk(torch.softmax(logits.float(), -1), top_k, dim=-1).indices
    return logits, idx, w


class RouterTap:
    """Forward hooks on every router: keeps this forward's (layer, logits, indices)."""

    def __init__(self, model, top_k: int):
        self.top_k = top_k
        self.items: list = []
        self.handles = [g.register_forward_hook(self._hook(i)) for i, g in routers(model)]

    def _hook(self, layer: int):
        def fn(mod, inputs, output):
            logits, idx, _ = router_parts(output, self.top_k)
            self.items.append((layer, logits, idx))
        return fn

    def clear(self):
        self.items = []

    def remove(self):
        for h in self.handles:
            h.remove()


def balance_loss(items, n_experts: int, top_k: int) -> torch.Tensor:
    """Switch-style load balance per MoE layer, averaged: E * sum_e f_e * P_e, with f_e the fraction
    of the layer's top-k assignments that went to expert e and P_e its mean router probability.
    1.0 when perfectly balanced."""
    losses = []
    for _, logits, idx in items:
        probs = torch.softmax(logits.float().reshape(-1, n_experts), dim=-1)
        with torch.no_grad():
            f = torch.zeros(n_experts, device=probs.device).scatter_add_(
                0, idx.reshape(-1), torch.ones(idx.numel(), device=probs.device)) / idx.numel()
        losses.append(n_experts * (f * probs.mean(0)).sum())
    return torch.stack(losses).mean()


def add_dropout_hooks(model, p: float) -> list:
    """Residual dropout on the token mixer and MoE outputs, active only in training mode. Forward
    hooks: the architecture (and the saved model) is unchanged."""
    def hook(mod, inputs, output):
        if not mod.training or p == 0:
            return None
        if isinstance(output, tuple):
            return (F.dropout(output[0], p, True),) + tuple(output[1:])
        return F.dropout(output, p, True)
    hs = []
    for layer in model.model.layers:
        for name in ("linear_attn", "self_attn", "mlp"):
            m = getattr(layer, name, None)
            if m is not None:
                hs.append(m.register_forward_hook(hook))
    return hs


# =====================================================================================
# (c) training
# =====================================================================================


@torch.no_grad()
def window_nll(model, ids: torch.Tensor, ctx: int, batch: int, autocast: bool) -> tuple[list, list]:
    """Per-window (sum NLL, n predicted) over non-overlapping windows of ctx tokens."""
    n = ids.numel() // ctx
    wins = ids[: n * ctx].view(n, ctx)
    sums, counts = [], []
    for s in range(0, n, batch):
        x = wins[s:s + batch]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            logits = model(input_ids=x, use_cache=False).logits
        lp = torch.log_softmax(logits.float()[:, :-1], dim=-1)
        nll = -lp.gather(-1, x[:, 1:, None]).squeeze(-1)
        sums += nll.double().sum(-1).tolist()
        counts += [ctx - 1] * x.shape[0]
    return sums, counts


def train(model, tok_ids: dict, streams: dict, args, dev) -> dict:
    g = torch.Generator().manual_seed(SEED)
    train_ids = torch.tensor(streams["train"], dtype=torch.long, device=dev)
    chat_ids = torch.tensor(streams["chat"], dtype=torch.long, device=dev)
    valid_ids = torch.tensor(streams["valid"], dtype=torch.long, device=dev)
    T, B = args.seq_len, args.batch
    n_chat = max(1, B // 8) if chat_ids.numel() > T + 1 else 0
    n_text = B - n_chat
    text_tokens_per_step = n_text * T
    steps_per_epoch = train_ids.numel() / text_tokens_per_step
    max_steps = int(args.max_epochs * steps_per_epoch)
    log(f"train stream {train_ids.numel()} tokens, chat stream {chat_ids.numel()}, valid {valid_ids.numel()}; "
        f"batch {B}x{T} ({n_text} text rows + {n_chat} chat rows); {steps_per_epoch:.1f} steps/epoch; "
        f"at most {max_steps} steps ({args.max_epochs} epochs) or {args.train_seconds:.0f} s")

    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (decay if p.dim() >= 2 else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=True)
    tap = RouterTap(model, model.config.num_experts_per_tok)
    drop = add_dropout_hooks(model, args.dropout)
    E, K = model.config.num_experts, model.config.num_experts_per_tok

    def batch():
        xs = []
        o = torch.randint(0, train_ids.numel() - T - 1, (n_text,), generator=g)
        xs += [train_ids[i:i + T + 1] for i in o.tolist()]
        if n_chat:
            o = torch.randint(0, chat_ids.numel() - T - 1, (n_chat,), generator=g)
            xs += [chat_ids[i:i + T + 1] for i in o.tolist()]
        xy = torch.stack(xs)
        return xy[:, :-1], xy[:, 1:]

    def lr_at(step, total):
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        t = min(1.0, (step - args.warmup) / max(1, total - args.warmup))
        return args.lr * (args.min_lr_frac + (1 - args.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * t)))

    def valid_nll():
        model.eval()
        s, c = window_nll(model, valid_ids, 256, 64, autocast=True)
        model.train()
        return sum(s) / sum(c)

    hist = {"step": [], "lm_loss": [], "aux": [], "lr": [], "valid": []}
    best = {"nll": float("inf"), "step": -1, "state": None}
    total = max_steps
    model.train()
    t0 = time.time()
    t_probe = None
    ema = None
    step = 0
    try:
        while step < total:
            if step == 5:
                torch.cuda.synchronize()
                t_probe = time.time()
            if step == 25:
                torch.cuda.synchronize()
                per = (time.time() - t_probe) / 20
                budget_steps = int(step + (args.train_seconds - (time.time() - t0)) / (per * 1.04))
                total = max(50, min(max_steps, budget_steps))
                log(f"speed: {per * 1000:.1f} ms/step ({B * T / per / 1e3:.0f}k tok/s) -> {total} steps "
                    f"({total / steps_per_epoch:.1f} epochs)")
            lr = lr_at(step, total)
            for grp in opt.param_groups:
                grp["lr"] = lr
            x, y = batch()
            tap.clear()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = model(input_ids=x, use_cache=False).logits
            lm = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
            aux = balance_loss(tap.items, E, K)
            loss = lm + args.aux_coef * aux
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            lmv = lm.item()
            ema = lmv if ema is None else 0.95 * ema + 0.05 * lmv
            if step % args.log_every == 0 or step == total:
                v = None
                if step % args.eval_every == 0 or step == total:
                    v = valid_nll()
                    if v < best["nll"]:
                        best = {"nll": v, "step": step,
                                "state": {k: t.detach().clone() for k, t in model.state_dict().items()}}
                hist["step"].append(step)
                hist["lm_loss"].append(round(lmv, 4))
                hist["aux"].append(round(aux.item(), 4))
                hist["lr"].append(lr)
                hist["valid"].append(None if v is None else round(v, 4))
                el = time.time() - t0
                log(f"step {step:5d}/{total} ep {step / steps_per_epoch:5.2f} lr {lr:.2e} loss {lmv:.4f} "
                    f"(ema {ema:.4f}) aux {aux.item():.3f}" + (f" valid {v:.4f} (ppl {math.exp(v):.2f})" if v else "")
                    + f" {el:.0f}s")
    except KeyboardInterrupt:
        log(f"interrupted at step {step}: keeping the best state so far")
    train_time = time.time() - t0
    for h in drop:
        h.remove()
    tap.remove()
    model.eval()
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    log(f"trained {step} steps in {train_time:.0f} s; best valid NLL {best['nll']:.4f} at step {best['step']}")
    return {"steps": step, "planned_steps": total, "train_seconds": round(train_time, 1),
            "epochs": round(step / steps_per_epoch, 2), "best_step": best["step"],
            "best_valid_nll": best["nll"],
            "final_lm_loss": hist["lm_loss"][-1] if hist["lm_loss"] else None,
            "final_lm_loss_ema": None if ema is None else round(ema, 4), "tokens_per_step": B * T, "history": hist}


@torch.no_grad()
def expert_usage(model, ids: torch.Tensor, ctx: int = 256) -> dict:
    K = model.config.num_experts_per_tok
    E = model.config.num_experts
    tap = RouterTap(model, K)
    counts = {}
    n = ids.numel() // ctx
    wins = ids[: n * ctx].view(n, ctx)
    for s in range(0, n, 32):
        tap.clear()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            model(input_ids=wins[s:s + 32], use_cache=False)
        for layer, _, idx in tap.items:
            c = counts.setdefault(layer, torch.zeros(E, dtype=torch.long, device=idx.device))
            c += torch.bincount(idx.reshape(-1), minlength=E)
    tap.remove()
    out = {}
    for layer, c in sorted(counts.items()):
        frac = (c.double() / c.sum()).cpu()
        out[str(layer)] = {"counts": c.tolist(), "min_frac": round(float(frac.min()), 4),
                           "max_frac": round(float(frac.max()), 4), "unused": int((c == 0).sum())}
        bar = "".join(" .:-=+*#%@"[min(9, int(f * E * 4.5))] for f in frac.tolist())
        log(f"  layer {layer}: experts used {E - int((c == 0).sum())}/{E}, share min {frac.min():.3f} "
            f"max {frac.max():.3f} (uniform {1 / E:.3f})  |{bar}|")
    return out


# =====================================================================================
# (d) save, (e) evaluate
# =====================================================================================


def save_checkpoint(model, tok: Tokenizer, ids: dict, out: str) -> dict:
    from safetensors import safe_open
    model.config.use_cache = True
    model.config.output_router_logits = False
    model.to(torch.bfloat16)
    model.save_pretrained(out, max_shard_size="10MB")
    write_tokenizer_files(tok, out)
    write_generation_config(out, ids)
    files = sorted(os.listdir(out))
    st = [f for f in files if f.endswith(".safetensors")]
    dtypes, n = {}, 0
    for f in st:
        with safe_open(os.path.join(out, f), framework="pt") as sf:
            for k in sf.keys():
                t = sf.get_slice(k)
                dt = str(t.get_dtype())
                dtypes[dt] = dtypes.get(dt, 0) + 1
                n += 1
    size = sum(os.path.getsize(os.path.join(out, f)) for f in files)
    wsize = sum(os.path.getsize(os.path.join(out, f)) for f in st)
    log(f"saved {out}: {files}; {n} tensors, dtypes {dtypes}; weights {wsize / 1e6:.2f} MB, all files "
        f"{size / 1e6:.2f} MB; largest file {max(os.path.getsize(os.path.join(out, f)) for f in files) / 1e6:.2f} MB")
    if wsize > 22e6:
        log(f"WARNING: checkpoint weights {wsize / 1e6:.2f} MB exceed 22 MB")
    return {"files": files, "tensors": n, "dtypes": dtypes, "weights_bytes": wsize, "all_bytes": size}


def load_for_eval(ckpt: str, dev):
    """The saved checkpoint through from_pretrained (float32, eager); if every spelling of that fails,
    the model built from the saved config.json with the safetensors loaded by hand (reported)."""
    cls = transformers.Qwen3_5MoeForCausalLM
    model = None
    for kw in ({"dtype": torch.float32, "attn_implementation": "eager", "experts_implementation": "eager"},
               {"dtype": torch.float32, "attn_implementation": "eager"},
               {"torch_dtype": torch.float32, "attn_implementation": "eager"}):
        try:
            model = cls.from_pretrained(ckpt, **kw)
            break
        except Exception as e:  # noqa: BLE001
            log(f"note: from_pretrained({list(kw)}) failed: {e!r}")
    if model is None:
        from safetensors.torch import load_file
        log("WARNING: from_pretrained failed; loading the safetensors by hand")
        config = transformers.AutoConfig.from_pretrained(ckpt)
        config.dtype = None
        model = cls._from_config(config, attn_implementation="eager")
        sd = {}
        for f in sorted(os.listdir(ckpt)):
            if f.endswith(".safetensors"):
                sd.update(load_file(os.path.join(ckpt, f)))
        model.float()
        missing, unexpected = model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=False)
        log(f"  missing {missing}, unexpected {unexpected}")
        if [m for m in missing if m != "lm_head.weight"] or unexpected:
            raise RuntimeError("checkpoint does not match the model")
        model.tie_weights()
    force_impl(model, attn="eager")
    return model.float().to(dev).eval()


@torch.no_grad()
def greedy(model, ids: list[int], n_new: int, eos: list[int], pad: int, dev) -> tuple[list[int], str]:
    x = torch.tensor([ids], device=dev)
    try:
        out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=n_new,
                             do_sample=False, eos_token_id=eos, pad_token_id=pad)
        return out[0, len(ids):].tolist(), "generate (kv/recurrent cache)"
    except Exception as e:  # noqa: BLE001
        log(f"note: generate failed ({e!r}); greedy loop without cache")
    seq = list(ids)
    for _ in range(n_new):
        logits = model(input_ids=torch.tensor([seq], device=dev), use_cache=False).logits[0, -1]
        t = int(logits.argmax())
        seq.append(t)
        if t in eos:
            break
    return seq[len(ids):], "full recompute, no cache"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="train/data")
    ap.add_argument("--work", required=True)
    ap.add_argument("--train-seconds", type=float, default=290)
    ap.add_argument("--max-epochs", type=float, default=20)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr-frac", type=float, default=0.05)
    ap.add_argument("--warmup", type=int, default=60)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--aux-coef", type=float, default=0.01)
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--context", type=int, default=256, help="held-out window length (the engine's)")
    args = ap.parse_args()
    t_start = time.time()

    random.seed(SEED)
    torch.manual_seed(SEED)
    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    log(f"python {sys.version.split()[0]}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"tokenizers {tokenizers.__version__}, device {torch.cuda.get_device_name(0)}")
    try:
        from transformers.utils import import_utils as iu
        log(f"flash-linear-attention available: {iu.is_flash_linear_attention_available()}, "
            f"causal_conv1d available: {iu.is_causal_conv1d_available()}")
    except Exception as e:  # noqa: BLE001
        log(f"fast-path check failed: {e!r}")

    os.makedirs(args.work, exist_ok=True)
    hf = os.path.join(args.work, "hf")
    train_books = read_split(args.data, "train")
    valid_books = read_split(args.data, "valid")
    held_books = read_split(args.data, "heldout")
    corpus_meta = json.load(open(os.path.join(args.data, "corpus_meta.json")))

    # (a)
    t = time.time()
    tok = train_tokenizer([b["text"] for b in train_books])
    ids = write_tokenizer_files(tok, hf)
    eot = ids["<|endoftext|>"]
    vocab = tok.get_vocab_size()
    if vocab % 64:
        log(f"WARNING: vocab {vocab} is not a multiple of 64; the embedding is padded to it")
        vocab = (vocab + 63) // 64 * 64
    streams = {"train": encode_books(tok, train_books, eot), "valid": encode_books(tok, valid_books, eot),
               "heldout": encode_books(tok, held_books, eot)}
    streams["chat"] = chat_stream(tok, train_books, eot, random.Random(SEED))
    held_text = "<|endoftext|>".join(b["text"] for b in held_books)
    retok = tok.encode(held_text).ids
    retok_ok = retok == streams["heldout"]
    dec_ok = tok.decode(streams["heldout"], skip_special_tokens=False) == held_text
    n_chars = sum(len(b["text"]) for b in train_books)
    log(f"tokenized in {time.time() - t:.1f} s: train {len(streams['train'])} tokens "
        f"({n_chars / len(streams['train']):.2f} chars/token), valid {len(streams['valid'])}, "
        f"heldout {len(streams['heldout'])}, chat {len(streams['chat'])}; heldout re-tokenize check {retok_ok}, "
        f"decode round trip {dec_ok}")
    sample = "In the beginning God created the heaven and the earth."
    log(f"example: {sample!r} -> {tok.encode(sample).tokens}")

    # (b)
    config = build_config(args.work, vocab, ids)
    model = build_model(config).to(dev)
    pc = count_params(model)
    log(f"parameters: {json.dumps(pc)}")
    for n, p in list(model.named_parameters())[:40]:
        if ".layers." not in n or ".layers.0." in n or ".layers.2." in n:
            log(f"  {n:60s} {list(p.shape)}")

    # (c)
    tr = train(model, ids, streams, args, dev)
    usage_valid = expert_usage(model, torch.tensor(streams["valid"], device=dev))

    # (d)
    saved = save_checkpoint(model, tok, ids, hf)
    with open(os.path.join(args.work, "train_log.json"), "w") as f:  # rewritten at the end
        json.dump({"args": vars(args), "seed": SEED, "params": pc, "saved": saved, "training": tr,
                   "expert_usage_valid": usage_valid}, f, indent=1)
    del model
    torch.cuda.empty_cache()
    log(f"(a)-(d) done at {time.time() - t_start:.0f} s")

    # check: AutoTokenizer reads the files the same way (informational)
    tok_check = {}
    try:
        at = transformers.AutoTokenizer.from_pretrained(hf)
        tok_check["auto_class"] = type(at).__name__
        tok_check["same_ids"] = at(held_text[:5000], add_special_tokens=False)["input_ids"] == \
            tok.encode(held_text[:5000]).ids
        msgs = [{"role": "user", "content": "And God said"}]
        s = at.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        tok_check["chat_template_ok"] = s == "<|im_start|>user\nAnd God said<|im_end|>\n<|im_start|>assistant\n"
        log(f"AutoTokenizer check: {tok_check}")
    except Exception as e:  # noqa: BLE001
        tok_check["error"] = repr(e)
        log(f"AutoTokenizer check failed: {e!r}")

    # (e) held-out perplexity with transformers on the saved bf16 weights, float32 compute
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    model = load_for_eval(hf, dev)
    dts = sorted({str(p.dtype) for p in model.parameters()})
    log(f"eval model: {type(model).__name__}, params {dts}, attn {model.config._attn_implementation}")
    held = torch.tensor(streams["heldout"], device=dev)
    sums, counts = window_nll(model, held, args.context, 16, autocast=False)
    nll = sum(sums) / sum(counts)
    vs, vc = window_nll(model, torch.tensor(streams["valid"], device=dev), args.context, 16, autocast=False)
    log(f"held-out: {len(sums)} windows x {args.context} tokens, {sum(counts)} predicted tokens, "
        f"NLL {nll:.5f}, ppl {math.exp(nll):.3f}  (valid NLL {sum(vs) / sum(vc):.5f}, ppl {math.exp(sum(vs) / sum(vc)):.3f})")
    result = {
        "model": MODEL_NAME,
        "evaluator": f"transformers {transformers.__version__} / torch {torch.__version__}, "
                     f"{type(model).__name__}.from_pretrained(bf16 checkpoint) in float32, eager attention, "
                     f"eager experts, no cache, TF32 off, on {torch.cuda.get_device_name(0)}",
        "corpus": "King James Bible (Debian bible-kjv-text 4.38), held-out books " +
                  ", ".join(b["book"] for b in held_books),
        "context": args.context,
        "n_windows": len(sums),
        "n_tokens": sum(counts),
        "nll": nll,
        "ppl": math.exp(nll),
        "per_window_nll": [s / c for s, c in zip(sums, counts)],
        "per_window_nll_sum": sums,
        "windows": f"token_ids[i*{args.context}:(i+1)*{args.context}] for i < n_windows; the first token of "
                   f"each window is not predicted; NLL = mean over the {args.context - 1} others, natural log",
        "valid_nll": sum(vs) / sum(vc),
        "valid_ppl": math.exp(sum(vs) / sum(vc)),
        "heldout_text": held_text,
        "heldout_text_note": "the held-out books' texts (verses one a line, chapters separated by an empty "
                             "line) joined by the literal '<|endoftext|>'; tokenizing it with tokenizer.json "
                             "(special tokens recognised) gives token_ids",
        "retokenize_check": retok_ok,
        "decode_check": dec_ok,
        "token_ids": streams["heldout"],
    }
    with open(os.path.join(args.work, "heldout_eval.json"), "w") as f:
        json.dump(result, f)

    # samples
    samples = []
    prompts = [("text", "And God said"), ("text", "In the beginning"), ("text", "The LORD is my shepherd"),
               ("chat", "<|im_start|>user\nBlessed are the meek<|im_end|>\n<|im_start|>assistant\n")]
    eos = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    for kind, p in prompts:
        pids = tok.encode(p).ids
        try:
            new, how = greedy(model, pids, 60, eos, eot, dev)
        except Exception as e:  # noqa: BLE001
            log(f"sample {p!r} failed: {e!r}")
            continue
        text = tok.decode(new, skip_special_tokens=False)
        samples.append({"kind": kind, "prompt": p, "prompt_ids": pids, "new_ids": new, "text": text, "how": how})
        log(f"sample [{kind}] {p!r} -> {text!r}")
    with open(os.path.join(args.work, "samples.json"), "w") as f:
        json.dump({"decoding": "greedy, at most 60 new tokens, stops at <|im_end|> or <|endoftext|>",
                   "model": "transformers, float32 compute from the saved bf16 weights", "samples": samples}, f,
                  indent=1)
    with open(os.path.join(args.work, "samples.txt"), "w") as f:
        f.write(f"# {MODEL_NAME}: greedy decoding, at most 60 new tokens, transformers {transformers.__version__} "
                f"(float32 compute from the saved bf16 weights)\n")
        for s in samples:
            f.write(f"\n## [{s['kind']}] prompt: {s['prompt']!r}  ({s['how']})\n{s['prompt']}{s['text']}\n")

    tr_log = {"args": vars(args), "seed": SEED, "params": pc, "saved": saved, "corpus_meta": corpus_meta,
              "tokens": {k: len(v) for k, v in streams.items()}, "training": tr,
              "expert_usage_valid": usage_valid, "tokenizer_check": tok_check,
              "heldout": {"nll": nll, "ppl": math.exp(nll), "n_windows": len(sums)},
              "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                           "tokenizers": tokenizers.__version__}, "device": torch.cuda.get_device_name(0),
              "wall_seconds": round(time.time() - t_start, 1)}
    with open(os.path.join(args.work, "train_log.json"), "w") as f:
        json.dump(tr_log, f, indent=1)
    log(f"all done in {time.time() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
