"""CPU weight formats for the transformers engine: answer quality against float32, and decode speed.

Reference: float32 greedy continuations (64 tokens) of 10 prompts. Each variant is scored teacher-forced on
those tokens: mean NLL, top-1 agreement with the reference token, mean KL(float32 || variant). Speed: plain
`generate`, greedy, one prompt (64 tokens) and a padded batch of 8 prompts (32 tokens, prefill included).
"""

import copy
import os
import sys
import time
import warnings

import torch
from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from ai_stack.engines.torch_device import pack_fp16_linears
from bench.scripts.prompts import PROMPTS

warnings.filterwarnings("ignore")  # torch.ao.quantization's deprecation notices
MODEL = os.path.expanduser("~/.cache/ai-stack/converted/qwen2.5-coder-0.5b-instruct-1d9614638d18")
QUESTIONS = [
    *PROMPTS,
    "What is the capital of France? Answer in one word.",
    "Translate 'good morning' to German.",
]
tok = AutoTokenizer.from_pretrained(MODEL)
tok.padding_side = "left"
ref = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32).eval()
chats = [
    tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
    for q in QUESTIONS
]
seqs = []
with torch.inference_mode():
    for text in chats:
        ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids
        out = ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=64, do_sample=False)
        seqs.append((ids.shape[1], out))


def int8(skip_to_fp16: tuple[str, ...] = (), qconfig=per_channel_dynamic_qconfig):
    model = copy.deepcopy(ref)
    spec = {
        name: qconfig
        for name, module in model.named_modules()
        if type(module) is torch.nn.Linear and not any(k in name for k in skip_to_fp16)
    }
    model = quantize_dynamic(model, spec)
    pack_fp16_linears(model)  # the layers left as nn.Linear: fp16 packed, as the engine does
    return model


def fp16_packed():
    model = copy.deepcopy(ref)
    pack_fp16_linears(model)
    return model


VARIANTS = {
    "float32": lambda: ref,
    "bfloat16": lambda: AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.bfloat16).eval(),
    "fp16 packed (engine default here)": fp16_packed,
    "int8 dynamic, per-tensor, all linears": lambda: int8(qconfig=default_dynamic_qconfig),
    "int8 dynamic, per-channel, all linears": lambda: int8(),
    "int8 per-channel, down_proj fp16": lambda: int8(("down_proj",)),
    "int8 per-channel, down_proj + lm_head fp16": lambda: int8(("down_proj", "lm_head")),
}


def score(model) -> tuple[float, float, float]:
    nll = agree = kl = n = 0.0
    with torch.inference_mode():
        for plen, out in seqs:
            lr = torch.log_softmax(ref(out).logits[0, plen - 1 : -1].float(), -1)
            lm = torch.log_softmax(model(out).logits[0, plen - 1 : -1].float(), -1)
            target = out[0, plen:]
            nll += -lm.gather(1, target[:, None]).sum().item()
            agree += (lm.argmax(-1) == target).sum().item()
            kl += (lr.exp() * (lr - lm)).sum().item()
            n += len(target)
    return nll / n, agree / n, kl / n


def speed(model) -> tuple[float, float]:
    rates = []
    for batch, new in ((1, 64), (8, 32)):
        enc = tok(chats[:batch], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            model.generate(**enc, max_new_tokens=2, do_sample=False)
            t = time.perf_counter()
            model.generate(**enc, max_new_tokens=new, min_new_tokens=new, do_sample=False)
            rates.append(batch * new / (time.perf_counter() - t))
    return rates[0], rates[1]


print(f"{sum(len(o[0]) - p for p, o in seqs)} reference tokens; load avg {os.getloadavg()[0]:.2f}")
print("| variant | NLL | top-1 agreement | KL | 1 stream tok/s | batch of 8 tok/s |")
print("|---|---|---|---|---|---|")
for name, make in VARIANTS.items():
    model = make()
    nll, agree, kl = score(model)
    one, eight = speed(model)
    print(f"| {name} | {nll:.3f} | {agree:.1%} | {kl:.4f} | {one:.1f} | {eight:.1f} |", flush=True)
    del model
