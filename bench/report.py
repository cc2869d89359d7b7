"""Render the Markdown report and its PNG plots (matplotlib, Agg) from a results dict."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.stats import fmt, fmt_ratio, fmt_spread

GB = 1e9


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return [*lines, ""]


def _gb(value: Any) -> str:
    return "-" if not value else f"{value / GB:.2f} GB"


def _best_of(summary: dict[str, Any], base: str) -> dict[str, float]:
    """ai-stack's best repetition against the baseline's best: max/max for tok/s, min/min (inverted) for TTFT."""
    ai, other = summary.get("ai-stack", {}), summary.get(base, {})
    best: dict[str, float] = {}
    if ai.get("decode_tok_s", {}).get("n") and other.get("decode_tok_s", {}).get("n"):
        best["decode_tok_s"] = ai["decode_tok_s"]["max"] / other["decode_tok_s"]["max"]
    for key in ("ttft_short_s", "ttft_long_s"):
        if ai.get(key, {}).get("n") and other.get(key, {}).get("n"):
            best[key] = other[key]["min"] / ai[key]["min"]
    return best


class Report:
    """Collects Markdown lines and plots for one results dict."""

    def __init__(self, results: dict[str, Any], out: Path, stem: str) -> None:
        self.r, self.out, self.stem = results, out, stem
        self.sections: dict[str, Any] = results.get("sections", {})
        self.lines: list[str] = []
        self.plots: list[str] = []

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def plot(self, name: str, draw: Callable[[Any], None], size: tuple[float, float] = (6.4, 3.6)) -> None:
        """Draw one figure into <stem>-<name>.png and link it."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=size, dpi=90)
        try:
            draw(ax)
            fig.tight_layout()
            file = f"{self.stem}-{name}.png"
            fig.savefig(self.out / file)
            self.plots.append(file)
            self.add(f"![{name}]({file})", "")
        finally:
            plt.close(fig)

    def section_ok(self, name: str, title: str) -> dict[str, Any] | None:
        """Write the section title; return its results, or None after noting a skip / error / absence."""
        self.add(f"## {title}", "")
        section = self.sections.get(name)
        if section is None:
            self.add("Not run in this results file.", "")
            return None
        if "error" in section:
            self.add(f"**Failed:** `{section['error']}`", "")
            return None
        if "skipped" in section:
            self.add(f"Skipped: {section['skipped']}", "")
            return None
        return section  # type: ignore[no-any-return]

    # -- sections -------------------------------------------------------------------------------------------
    def header(self) -> None:
        r, m = self.r, self.r.get("machine", {})
        versions = m.get("versions", {})
        load = r.get("load_average", {})
        self.add(
            f"# ai-stack benchmark: {r.get('date')}, {r.get('machine_slug')} ({r.get('mode')})",
            "",
            "Every comparison below is a ratio measured in the same run, the arms alternating (A B C, C B A, ...),"
            " reported as the median of per-repetition ratios with the min–max spread and n. Raw samples are in"
            f" `{self.stem}.json`. Reproduce with `make bench` (full) or `make bench-quick`.",
            "",
        )
        gpu = m.get("gpu")
        rows = [
            ["CPU", f"{m.get('cpu')} ({', '.join(m.get('cpu_flags', []))})"],
            ["cores", f"{m.get('cores_logical')} logical / {m.get('cores_physical')} physical"],
            ["RAM", f"{m.get('ram_gb')} GB"],
            ["GPU", f"{gpu['name']} ({gpu['memory_gb']} GB)" if gpu else "none"],
            ["OS", m.get("os")],
            [
                "ai_stack/ files differing from the commit",
                ", ".join(versions.get("ai-stack-dirty-files") or []) or "none recorded",
            ],
            ["versions", ", ".join(f"{k} {v}" for k, v in versions.items() if v and not isinstance(v, list))],
            ["load average (1/5/15 min)", f"start {load.get('start')}, end {load.get('end')}"],
            ["settings", ", ".join(f"{k}={v}" for k, v in r.get("settings", {}).items())],
        ]
        if r.get("overrides"):
            rows.append(["overrides", ", ".join(r["overrides"])])
        rows.append(["run", f"{r.get('started_at')} → {r.get('finished_at')}"])
        for earlier in r.get("earlier_runs", []):
            rows.append(
                [
                    "earlier run (sections kept)",
                    f"{earlier.get('started_at')} → {earlier.get('finished_at')}, overrides "
                    f"{', '.join(earlier.get('overrides') or []) or 'none'}, load {earlier.get('load_average')}",
                ]
            )
        per_section = [
            f"{name}: {', '.join(sec['run']['overrides']) or 'none'} (load {sec.get('load_average_start')} → "
            f"{sec.get('load_average')})"
            for name, sec in self.sections.items()
            if isinstance(sec.get("run"), dict)
        ]
        if per_section:
            rows.append(["per section: overrides (load average start → end)", "; ".join(per_section)])
        self.add(*_table(["machine", ""], rows))
        for note in r.get("notes", []):
            self.add(f"> **Note:** {note}", "")

    def headline(self) -> None:
        self.add("## Headline", "")
        rows: list[list[str]] = []
        chat = self.sections.get("chat", {})
        summary = chat.get("summary", {})
        for base, ratios in chat.get("ratios", {}).items():
            best = _best_of(summary, base)
            for label, key, best_key in (
                (f"decode tok/s, ai-stack ÷ {base}", "decode_tok_s", "decode_tok_s"),
                (f"TTFT short prompt, {base} ÷ ai-stack", "ttft_short", "ttft_short_s"),
                (f"TTFT long prompt, {base} ÷ ai-stack", "ttft_long", "ttft_long_s"),
            ):
                rows.append(
                    [
                        label,
                        fmt_ratio(ratios.get(key)),
                        f">1: ai-stack faster; best-of-n {fmt(best.get(best_key))}×",
                    ]
                )
        if chat.get("llama_cpp_skipped"):
            rows.append(["vs llama.cpp", "-", chat["llama_cpp_skipped"]])
        gateway = self.sections.get("gateway", {})
        for case, data in gateway.get("cases", {}).items():
            if case.startswith("sequential"):
                rows.append(
                    [
                        f"gateway added latency p50, {case.split('_')[1]}",
                        fmt_spread(data.get("added_p50_ms"), 2) + " ms",
                        "ai-stack (fake engine) − bare Starlette",
                    ]
                )
            else:
                rows.append(
                    [
                        f"gateway requests/s, {case.split('_')[1]}, ai-stack ÷ Starlette",
                        fmt_ratio(data.get("rps_ratio")),
                        f"{gateway['settings']['concurrency']} connections",
                    ]
                )
        speech = self.sections.get("speech", {}).get("rtf", {}).get("rtf", {})
        for voice, formats in speech.items():
            cells = ", ".join(f"{f} {fmt(v.get('median'), 3)}" for f, v in formats.items())
            rows.append([f"RTF {voice}", cells, "synthesis time ÷ audio time, <1 faster than real time"])
        startup = self.sections.get("startup", {})
        if startup.get("warm_summary"):
            w = startup["warm_summary"]
            rows.append(
                [
                    "start-up, warm cache, all default models",
                    f"HTTP up {fmt_spread(w['http_up_s'])} s, ready {fmt_spread(w['ready_s'])} s",
                    "",
                ]
            )
        if startup.get("cold"):
            rows.append(
                [
                    "start-up, cold (GGUF → bf16 conversion)",
                    f"ready {fmt(startup['cold']['ready_s'], 1)} s",
                    "",
                ]
            )
        for label, value, note in self._ceiling_rows():
            rows.append([label, value, note])
        self.add(*_table(["what", "result", "note"], rows))

    def _ceiling_rows(self) -> list[tuple[str, str, str]]:
        """Ceilings from the best copy bandwidth and from the read bandwidth; achieved ÷ each, per arm."""
        physical, chat = self.sections.get("physical", {}), self.sections.get("chat", {})
        ceiling = physical.get("ceiling")
        if not ceiling:
            return []
        bf16_bytes = physical["model_bf16"]["weight_bytes_per_token"]
        gguf_bytes = physical.get("model_gguf", {}).get("weight_bytes_per_token")
        best = ceiling["bandwidth_gb_s"] * GB
        read = physical["bandwidth"].get("torch_read_sum", {}).get("gb_s", {}).get("median", 0.0) * GB
        rows = [
            (
                "decode ceiling, bf16",
                f"{best / bf16_bytes:.1f} tok/s (read: {read / bf16_bytes:.1f})",
                f"{ceiling['bandwidth_method']} {best / GB:.1f} GB/s (torch read {read / GB:.1f} GB/s) "
                f"÷ {bf16_bytes / GB:.3f} GB/token",
            )
        ]
        per_token = {
            "llama.cpp": gguf_bytes,
            "ai-stack llama.cpp": gguf_bytes,
            "ai-stack fp32": 2 * bf16_bytes,
        }
        for arm, summary in chat.get("summary", {}).items():
            achieved = summary.get("decode_tok_s", {}).get("median")
            size = per_token.get(arm, bf16_bytes)
            if achieved is None or not size:
                continue
            rows.append(
                (
                    f"achieved ÷ ceiling, {arm}",
                    f"{achieved * size / best:.0%} (of read-based: {achieved * size / read:.0%})"
                    if read
                    else f"{achieved * size / best:.0%}",
                    f"{achieved:.2f} tok/s × {size / GB:.3f} GB/token = {achieved * size / GB:.1f} GB/s",
                )
            )
        return rows

    def chat(self) -> None:
        section = self.section_ok("chat", "Chat: ai-stack over HTTP vs baselines")
        if section is None:
            return
        tokens = section.get("prompt_tokens", {})
        self.add(
            f"Default model `{section.get('model', '')}`, greedy. Prompts: short {tokens.get('short')} tokens, "
            f"long {tokens.get('long')} tokens, decode prompt {tokens.get('decode')} tokens. ai-stack is measured "
            "through `ai-stack serve` with a streaming HTTP client; transformers is `model.generate` in its own "
            "process on the same bf16 folder; llama.cpp is llama-cpp-python on the same Q4_K_M GGUF (it reads "
            "4-bit weights, ai-stack and transformers read bf16). Other ai-stack arms, when present: `fp32` "
            "(dtype float32), `fp16 packed` (dtype float16: fbgemm fp16 GEMM, what `auto` picks on CPUs "
            "without bf16 units) and `llama.cpp` (the llama.cpp engine on the GGUF). "
            "TTFT = request sent → first content token; "
            "decode tok/s = (tokens − 1) ÷ (last token − first token).",
            "",
        )
        if section.get("llama_cpp_skipped"):
            self.add(f"llama.cpp: skipped: {section['llama_cpp_skipped']}", "")
        rows = []
        for arm, summary in section.get("summary", {}).items():
            rows.append(
                [
                    arm,
                    fmt_spread(summary["ttft_short_s"], 2),
                    fmt_spread(summary["ttft_long_s"], 2),
                    fmt_spread(summary["decode_tok_s"], 2),
                    fmt_spread(summary["request_s"], 1),
                ]
            )
        self.add(
            *_table(["arm", "TTFT short (s)", "TTFT long (s)", "decode tok/s", "decode request (s)"], rows)
        )
        rows = []
        for base, ratios in section.get("ratios", {}).items():
            best = _best_of(section.get("summary", {}), base)
            rows.append(
                [
                    base,
                    fmt(best.get("decode_tok_s")) + "× / " + fmt(best.get("ttft_long_s")) + "×",
                    fmt_ratio(ratios.get("decode_tok_s")),
                    fmt_ratio(ratios.get("ttft_short")),
                    fmt_ratio(ratios.get("ttft_long")),
                    fmt_ratio(ratios.get("request")),
                ]
            )
        if rows:
            self.add(
                "ai-stack (bf16) relative to each other arm (>1: ai-stack faster): median of the "
                "per-repetition ratios (min–max, n). Best-of-n compares each arm's best repetition (highest "
                "tok/s, lowest TTFT), the least disturbed by other tenants of a shared machine.",
                "",
            )
            self.add(
                *_table(
                    [
                        "vs",
                        "best-of-n: decode / TTFT long",
                        "decode tok/s",
                        "TTFT short",
                        "TTFT long",
                        "whole decode request",
                    ],
                    rows,
                )
            )
        engine_rows = [
            [
                pair,
                fmt_ratio(ratios.get("decode_tok_s"), 3),
                fmt_ratio(ratios.get("ttft_short")),
                f"{ratios.get('ttft_short_diff_s', 0.0) * 1000:+.0f} ms",
                fmt_ratio(ratios.get("ttft_long")),
            ]
            for pair, ratios in section.get("engine_ratios", {}).items()
        ]
        if engine_rows:
            self.add(
                "An engine over HTTP against the library it wraps, on the same file (>1: ai-stack faster):",
                "",
            )
            self.add(
                *_table(
                    ["pair", "decode tok/s", "TTFT short", "TTFT short, difference of medians", "TTFT long"],
                    engine_rows,
                )
            )
        workers = section.get("workers", {})
        if workers:
            self.add(
                "Baseline set-up: "
                + "; ".join(
                    f"{k}: loaded in {v.get('load_s', 0):.1f} s, "
                    + ", ".join(f"{a}={b}" for a, b in v.items() if a not in ("ready", "load_s"))
                    for k, v in workers.items()
                )
                + ". llama-cpp-python's `Llama` runs one sequence at a time (no "
                "parallel slots in the binding), so its aggregate rate under concurrency equals its single stream.",
                "",
            )
        self.sweep(section.get("sweep", {}), section.get("summary", {}))
        self.engine_sweep(section.get("engine_sweep", {}))
        self.profile(section.get("profile", {}))

    def engine_sweep(self, sweep: dict[str, Any]) -> None:
        """The other engines under N concurrent streams: aggregate tok/s and its ratio to 1 client."""
        by_arm = sweep.get("levels", {})
        if not by_arm:
            return
        self.add(
            "### Concurrency sweep of the other engines",
            "",
            f"Same load ({sweep.get('max_tokens')} new tokens per stream), levels alternated across these "
            "servers. Ratio = aggregate ÷ the same server's 1-client aggregate (both include prefill).",
            "",
        )
        rows = []
        for arm, levels in by_arm.items():
            base = next((lv["aggregate_tok_s"] for lv in levels if lv["clients"] == 1), None)
            for level in levels:
                ratio = level["aggregate_tok_s"] / base if base else None
                rows.append(
                    [
                        arm,
                        level["clients"],
                        fmt(level["aggregate_tok_s"]),
                        fmt(level["ttft"]["p50"], 2),
                        fmt(ratio) + ("×" if ratio else ""),
                    ]
                )
        self.add(*_table(["server", "clients", "aggregate tok/s", "p50 TTFT (s)", "÷ 1 client"], rows))

        def throughput(ax: Any) -> None:
            for arm, levels in by_arm.items():
                xs = [lv["clients"] for lv in levels]
                ax.plot(xs, [lv["aggregate_tok_s"] for lv in levels], "o-", label=arm)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("concurrent clients")
            ax.set_ylabel("aggregate tokens/s")
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3)

        self.plot("engines-vs-concurrency", throughput)

    def sweep(self, sweep: dict[str, Any], summary: dict[str, Any]) -> None:
        levels = sweep.get("levels", [])
        if not levels:
            return
        batches = {b["clients"]: b for b in sweep.get("transformers_batch", [])}
        self.add(
            "### Concurrency sweep",
            "",
            f"N streaming clients at once, {sweep.get('max_tokens')} new tokens each; aggregate tok/s = all "
            "tokens ÷ wall time. Baseline: one padded batch of N prompts in one `generate` call.",
            "",
        )
        rows = []
        for level in levels:
            n = level["clients"]
            batch = batches.get(n)
            ratio = level["aggregate_tok_s"] / batch["aggregate_tok_s"] if batch else None
            rows.append(
                [
                    n,
                    fmt(level["aggregate_tok_s"]),
                    fmt(level["latency"]["p50"], 1),
                    fmt(level["latency"]["p95"], 1),
                    fmt(level["ttft"]["p50"], 1),
                    fmt(batch["aggregate_tok_s"]) if batch else "-",
                    fmt(ratio) + ("×" if ratio else ""),
                ]
            )
        self.add(
            *_table(
                [
                    "clients",
                    "ai-stack tok/s",
                    "p50 latency (s)",
                    "p95 latency (s)",
                    "p50 TTFT (s)",
                    "transformers batch tok/s",
                    "ai-stack ÷ batch",
                ],
                rows,
            )
        )
        self.add(
            f"Server RSS: {_gb(sweep.get('rss_before_bytes'))} before the sweep, peak "
            f"{_gb(sweep.get('peak_rss_bytes'))} during it.",
            "",
        )

        def throughput(ax: Any) -> None:
            xs = [lv["clients"] for lv in levels]
            ax.plot(xs, [lv["aggregate_tok_s"] for lv in levels], "o-", label="ai-stack (HTTP, streaming)")
            if batches:
                bx = sorted(batches)
                ax.plot(
                    bx,
                    [batches[x]["aggregate_tok_s"] for x in bx],
                    "s--",
                    label="transformers generate, batch of N",
                )
            for arm, values in summary.items():
                if values.get("decode_tok_s", {}).get("median"):
                    ax.axhline(values["decode_tok_s"]["median"], ls=":", lw=1, color="gray")
                    ax.annotate(f"{arm} single stream", (xs[0], values["decode_tok_s"]["median"]), fontsize=7)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("concurrent clients")
            ax.set_ylabel("aggregate tokens/s")
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3)

        def latency(ax: Any) -> None:
            ax.boxplot([lv["latency_s"] for lv in levels], tick_labels=[str(lv["clients"]) for lv in levels])
            ax.set_xlabel("concurrent clients")
            ax.set_ylabel("request latency (s)")
            ax.grid(alpha=0.3)

        self.plot("tokens-vs-concurrency", throughput)
        self.plot("latency-vs-concurrency", latency)

    def profile(self, profile: dict[str, Any]) -> None:
        self.add("### Profile of the concurrency sweep", "")
        if not profile or "summary" not in profile:
            self.add(f"Not profiled: {profile.get('skipped', 'no profile recorded')}", "")
            return
        summary = profile["summary"]
        load = profile.get("load", {})
        self.add(
            f"{profile.get('tool')}, attached to the server during a separate pass of {load.get('clients')} "
            f"concurrent clients ({fmt(load.get('aggregate_tok_s'))} tok/s under the profiler); "
            f"{summary['samples']} samples; stacks in `{profile.get('raw_file')}`.",
            "",
        )
        self.add("Threads (share of samples):", "")
        self.add(
            *_table(["thread", "share"], [[t["frame"], f"{t['share']:.0%}"] for t in summary["threads"][:6]])
        )
        self.add("Top functions by own time (leaf frames):", "")
        self.add(
            *_table(
                ["function", "share"],
                [[f"`{t['frame']}`", f"{t['share']:.0%}"] for t in summary["self"][:10]],
            )
        )
        self.add("ai-stack / transformers / torch functions by inclusive time:", "")
        self.add(
            *_table(
                ["function", "share"],
                [[f"`{t['frame']}`", f"{t['share']:.0%}"] for t in summary["inclusive_ai_stack_torch"][:12]],
            )
        )

    def physical(self) -> None:
        section = self.section_ok("physical", "Physical limit: memory bandwidth and the decode ceiling")
        if section is None:
            return
        bw = section["bandwidth"]
        rows = [[k, fmt_spread(v["gb_s"], 1)] for k, v in bw.items() if isinstance(v, dict) and "gb_s" in v]
        self.add(*_table(["method", "GB/s median (min–max)"], rows))
        model = section["model_bf16"]
        ceiling = section["ceiling"]
        self.add(
            f"Bytes read per decoded token (bf16): {model['weight_bytes_per_token'] / GB:.3f} GB "
            f"({model['weight_bytes_per_token'] / 2e6:.0f} M parameters × 2 bytes; the folder stores "
            f"{model['params'] / 1e6:.0f} M). Every linear layer's weights are read once per token. The input "
            "embedding is only a row lookup per token, so it is left out; the LM head (vocab × hidden, "
            f"{model['lm_head_bytes'] / GB:.3f} GB) is read whole. With tied embeddings the LM head is the "
            "embedding matrix and is counted once; this converted folder has them untied "
            f"(tie_word_embeddings = {str(model['tied_embeddings']).lower()}), so the embedding matrix is stored "
            "(and resident) but not read per token. The KV cache adds "
            f"{model['kv_bytes_per_context_token']} bytes per token of context "
            "(negligible at these lengths). Ceiling = best median bandwidth "
            f"({ceiling['bandwidth_method']}, {ceiling['bandwidth_gb_s']:.1f} GB/s) ÷ bytes per token = "
            f"**{ceiling['bf16_tok_s']:.1f} tok/s** (bf16)"
            + (
                f", {ceiling['gguf_tok_s']:.1f} tok/s for the Q4_K_M GGUF "
                f"({section['model_gguf']['weight_bytes_per_token'] / GB:.3f} GB/token)"
                if "gguf_tok_s" in ceiling
                else ""
            )
            + "; float32 reads twice the bytes, so its ceiling is half the bf16 one.",
            "",
        )
        rows = [[a, b, c] for a, b, c in self._ceiling_rows()]
        self.add(*_table(["", "value", "detail"], rows))

    def gateway(self) -> None:
        section = self.section_ok("gateway", "Gateway overhead: ai-stack (fake engine) vs bare Starlette")
        if section is None:
            return
        st = section["settings"]
        self.add(
            f"Load generator: {st['load_generator']}; {st['seconds']} s per run, {st['repetitions']} repetitions "
            f"alternating; sequential = 1 connection, one request at a time; concurrent = {st['concurrency']} "
            "connections. The fake engine answers 3 tokens at once; the Starlette app parses the body and sends the "
            "same JSON / SSE shapes. Both run under uvicorn with log level warning. Added latency is the paired "
            "difference of p50 (p99) per repetition.",
            "",
        )
        rows = []
        for case, data in section["cases"].items():
            a, b = data["ai_stack"], data["starlette"]
            rows.append(
                [
                    case,
                    fmt(a["rps"]["median"], 0),
                    fmt(b["rps"]["median"], 0),
                    fmt_ratio(data["rps_ratio"]),
                    fmt(a["p50_ms"]["median"]),
                    fmt(b["p50_ms"]["median"]),
                    fmt_spread(data["added_p50_ms"]),
                    fmt(a["p99_ms"]["median"]),
                    fmt(b["p99_ms"]["median"]),
                    fmt_spread(data["added_p99_ms"]),
                ]
            )
        self.add(
            *_table(
                [
                    "case",
                    "ai-stack req/s",
                    "Starlette req/s",
                    "req/s ratio",
                    "ai-stack p50 ms",
                    "Starlette p50 ms",
                    "added p50 ms",
                    "ai-stack p99 ms",
                    "Starlette p99 ms",
                    "added p99 ms",
                ],
                rows,
            )
        )

        def draw(ax: Any) -> None:
            data, labels = [], []
            for case in ("sequential_full", "sequential_stream"):
                for arm in ("ai-stack", "starlette"):
                    runs = section["raw"].get(arm, {}).get(case, [])
                    data.append([x for r in runs for x in r["latencies_ms"]])
                    labels.append(f"{arm}\n{case.split('_')[1]}")
            ax.boxplot(data, tick_labels=labels, showfliers=False)
            ax.set_ylabel("latency (ms), sequential")
            ax.tick_params(axis="x", labelsize=7)
            ax.grid(alpha=0.3)

        self.plot("gateway-latency", draw)

    def speech(self) -> None:
        section = self.section_ok("speech", "Speech")
        if section is None:
            return
        rtf = section["rtf"]
        formats = sorted({f for v in rtf["rtf"].values() for f in v})
        self.add(
            f"Text of {len(section['text'])} characters; audio length per voice: "
            + ", ".join(f"{k} {v:.1f} s" for k, v in rtf["audio_s"].items())
            + ". RTF = whole response time ÷ audio duration (median (min–max)); voices alternate.",
            "",
        )
        rows = [[voice] + [fmt_spread(rtf["rtf"][voice].get(f), 3) for f in formats] for voice in rtf["rtf"]]
        self.add(*_table(["voice", *formats], rows))

        def draw(ax: Any) -> None:
            voices = list(rtf["rtf"])
            width = 0.8 / max(len(voices), 1)
            for i, voice in enumerate(voices):
                meds = [rtf["rtf"][voice].get(f, {}).get("median", math.nan) for f in formats]
                ax.bar([x + i * width for x in range(len(formats))], meds, width, label=voice)
            ax.set_xticks([x + width * (len(voices) - 1) / 2 for x in range(len(formats))], formats)
            ax.set_ylabel("real-time factor")
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3, axis="y")

        self.plot("rtf-per-voice", draw)
        streaming = section.get("streaming", {})
        if streaming:
            rows = [
                [
                    v,
                    fmt_spread(streaming["first_byte_s"][v], 3),
                    fmt_spread(streaming["total_s"][v], 2),
                    fmt_ratio(streaming["total_over_first_byte"][v], 1),
                ]
                for v in streaming["first_byte_s"]
            ]
            self.add("Streamed `pcm`: time to first audio byte vs the whole response:", "")
            self.add(*_table(["voice", "first byte (s)", "whole (s)", "whole ÷ first byte"], rows))
        conc = section.get("concurrent_summary", {})
        if conc:
            rows = [
                [
                    n,
                    fmt_spread(v["alone_latency_s"], 2),
                    fmt_spread(v["with_chat_latency_s"], 2),
                    fmt_ratio(v["slowdown"]),
                ]
                for n, v in conc.items()
            ]
            self.add("Concurrent Piper requests (wav), alone and while one chat stream decodes:", "")
            self.add(
                *_table(
                    ["requests", "latency alone (s)", "latency with chat (s)", "wall with ÷ without chat"],
                    rows,
                )
            )
        if "chat_tok_s_alone" in section:
            during = ", ".join(
                f"{fmt(v)} tok/s with {k} speech clients"
                for k, v in section["chat_tok_s_with_speech"].items()
            )
            self.add(f"Chat decode alone {fmt(section['chat_tok_s_alone'])} tok/s; {during}.", "")

    def startup(self) -> None:
        section = self.section_ok("startup", "Start-up and memory")
        if section is None:
            return
        w = section["warm_summary"]
        self.add(
            f"Warm cache, all default models ({', '.join(section['models'])}) autoloaded: process start → "
            f"HTTP up {fmt_spread(w['http_up_s'])} s → ready {fmt_spread(w['ready_s'])} s; RSS when ready "
            f"{fmt_spread(w['rss_ready_bytes'], 2, 1 / GB)} GB.",
            "",
        )
        if section.get("cold"):
            c = section["cold"]
            self.add(
                f"Cold (empty AI_STACK_HOME; the GGUF assembled and converted to bf16): HTTP up "
                f"{fmt(c['http_up_s'])} s, chat model ready {fmt(c['ready_s'], 1)} s, RSS {_gb(c['rss_ready_bytes'])}.",
                "",
            )
        else:
            self.add(f"Cold start: {section.get('cold_skipped')}", "")
        rows = [
            [
                m["model"],
                fmt(m["load_s"], 1),
                _gb(m["rss_before_bytes"]),
                _gb(m["rss_after_bytes"]),
                _gb(m["rss_delta_bytes"]),
            ]
            for m in section["per_model"]
        ]
        self.add(
            f"Loaded one by one (autoload off); RSS with no model loaded {_gb(section.get('rss_empty_bytes'))}:",
            "",
        )
        self.add(*_table(["model", "load (s)", "RSS before", "RSS after", "delta"], rows))

    def gpu(self) -> None:
        section = self.section_ok("gpu", "GPU")
        if section is None:
            return
        rows = []
        for name, v in section.get("variants", {}).items():
            rows.append(
                [
                    name,
                    fmt_spread(v["decode_tok_s"]),
                    fmt_spread(v["ttft_long_s"]),
                    ", ".join(f"{lv['clients']}: {lv['aggregate_tok_s']:.1f}" for lv in v["sweep"]),
                ]
            )
        self.add(*_table(["variant", "decode tok/s", "TTFT long (s)", "aggregate tok/s by clients"], rows))
        if section.get("nf4_skipped"):
            self.add(f"NF4: skipped: {section['nf4_skipped']}", "")

    def prefix_cache(self) -> None:
        """Issue 19: the llama.cpp engine's prefix cache against cache off and raw llama-cpp-python."""
        if self.sections.get("prefix_cache") is None:
            return  # a suite run without it: no empty section
        section = self.section_ok("prefix_cache", "Prefix cache (llama.cpp engine)")
        if section is not None:
            from bench.prefix_cache import report_lines

            self.add(*report_lines(section))

    def head_of_line(self) -> None:
        """Issue 13 part 3: a short request behind a long prompt, abandoned or running."""
        if self.sections.get("head_of_line") is None:
            return
        section = self.section_ok("head_of_line", "Head-of-line blocking by a long prompt")
        if section is not None:
            from bench.head_of_line import report_lines

            self.add(*report_lines(section))

    def render(self) -> Path:
        self.header()
        self.headline()
        for part in (
            self.chat,
            self.physical,
            self.gateway,
            self.speech,
            self.startup,
            self.gpu,
            self.prefix_cache,
            self.head_of_line,
        ):
            part()
        self.add(
            "Section durations and the load average (1 min) at each section's end: "
            + ", ".join(
                f"{k} {v.get('duration_s')} s (load {(v.get('load_average') or ['-'])[0]})"
                for k, v in self.sections.items()
            )
            + ".",
            "",
        )
        path = self.out / f"{self.stem}.md"
        path.write_text("\n".join(self.lines))
        return path


def write_report(results: dict[str, Any], out: Path, stem: str) -> Path:
    """Write <stem>.md and <stem>-*.png into out; return the Markdown path."""
    out.mkdir(parents=True, exist_ok=True)
    return Report(results, out, stem).render()
