"""Fill-in-the-middle prompts in each code model's own tokens, and the tokens that end a completion.

Shared by the raw-completion surfaces: OpenAI's `suffix`, llama.cpp's /infill, Ollama's `suffix`.
A family is detected from the tokens the model's vocabulary has (`engine.token_id`), as llama.cpp does.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ai_stack.engines.base import ChatEngine
from ai_stack.errors import InvalidRequest
from ai_stack.serving.generation import PreparedChat

# Separates repository chunks for a model without file tokens (llama.cpp's "--- snippet ---").
SNIPPET_SEPARATOR = "\n\n--- snippet ---\n\n"
# The current file's name where a model with file tokens expects one and the client gave none (llama.cpp's).
DEFAULT_PATH = "filename"


@dataclass(frozen=True)
class FimFamily:
    """One family's FIM tokens: prefix, suffix, middle (None: suffix-first with no middle token)."""

    name: str
    prefix: str
    suffix: str
    middle: str | None
    repo: tuple[str, ...] = ()  # the repository-name token, first one the vocabulary has
    file_sep: tuple[str, ...] = ()  # the file-separator token, first one the vocabulary has
    ends: tuple[str, ...] = ()  # tokens that end a middle (besides the model's EOS)
    spaced: bool = False  # CodeLlama: "<PRE> {prefix} <SUF>{suffix} <MID>"


FAMILIES: tuple[FimFamily, ...] = (
    # Qwen2.5-Coder (and CodeGemma, which shares the FIM names and ends files with <|file_separator|>).
    FimFamily(
        "qwen",
        "<|fim_prefix|>",
        "<|fim_suffix|>",
        "<|fim_middle|>",
        repo=("<|repo_name|>",),
        file_sep=("<|file_sep|>", "<|file_separator|>"),
        ends=(
            "<|endoftext|>",
            "<|fim_pad|>",
            "<|file_sep|>",
            "<|file_separator|>",
            "<|repo_name|>",
            "<|fim_prefix|>",
            "<|fim_suffix|>",
            "<|fim_middle|>",
            "<|im_end|>",
        ),
    ),
    # StarCoder 1 and 2, SantaCoder, Granite code.
    FimFamily(
        "starcoder",
        "<fim_prefix>",
        "<fim_suffix>",
        "<fim_middle>",
        repo=("<repo_name>", "<reponame>"),
        file_sep=("<file_sep>", "<filename>"),
        ends=("<|endoftext|>", "<fim_pad>", "<file_sep>", "<filename>", "<fim_prefix>", "<fim_suffix>"),
    ),
    # CodeLlama: a Hugging Face tokenizer spells the tokens with sentencepiece's space mark, GGUF without.
    FimFamily("codellama-hf", "▁<PRE>", "▁<SUF>", "▁<MID>", ends=("▁<EOT>",)),
    FimFamily("codellama", "<PRE>", "<SUF>", "<MID>", ends=("<EOT>",), spaced=True),
    # DeepSeek-Coder (its tokens are spelled with fullwidth bars and sentencepiece's space mark).
    FimFamily(
        "deepseek",
        "<\uff5cfim\u2581begin\uff5c>",
        "<\uff5cfim\u2581hole\uff5c>",
        "<\uff5cfim\u2581end\uff5c>",
        ends=("<|EOT|>", "<\uff5cend\u2581of\u2581sentence\uff5c>"),
    ),
    # Codestral and other Mistral code models: suffix first, no middle token.
    FimFamily("codestral", "[PREFIX]", "[SUFFIX]", None, ends=("</s>",)),
)


def _has(engine: ChatEngine, token: str) -> bool:
    return engine.token_id(token) is not None


def fim_family(engine: ChatEngine) -> FimFamily | None:
    """The FIM family whose tokens the model's vocabulary has, or None."""
    for family in FAMILIES:
        tokens = [family.prefix, family.suffix] + ([family.middle] if family.middle else [])
        if all(_has(engine, token) for token in tokens):
            return family
    return None


def _first(engine: ChatEngine, tokens: tuple[str, ...]) -> str | None:
    return next((token for token in tokens if _has(engine, token)), None)


def _context(
    engine: ChatEngine, family: FimFamily, extra: list[tuple[str, str]], repo: str | None, path: str | None
) -> str:
    """Repository context before the FIM prefix: named files with file tokens, else plain snippets."""
    sep = _first(engine, family.file_sep)
    if sep is None:
        snippets = "".join(f"{SNIPPET_SEPARATOR}{text}" for _, text in extra)
        return f"{snippets}{SNIPPET_SEPARATOR}" if extra else ""
    repo_token = _first(engine, family.repo)
    head = f"{repo_token}{repo}\n" if repo_token and repo else ""
    files = "".join(f"{sep}{name}\n{text}\n" for name, text in extra)
    return f"{head}{files}{sep}{path or DEFAULT_PATH}\n"


def fim_prompt(
    engine: ChatEngine,
    prefix: str,
    suffix: str,
    extra: list[tuple[str, str]] | None = None,
    repo: str | None = None,
    *,
    path: str | None = None,
    param: str = "suffix",
) -> str:
    """The model's FIM prompt for the text before and after the cursor, with other files as context.

    `extra` holds (filename, text) chunks, `repo` the repository name, `path` the current file's name (used
    only with context). A model without FIM tokens is a 400 naming `param`.
    """
    family = fim_family(engine)
    if family is None:
        raise InvalidRequest(
            f"'{param}' needs a model with fill-in-the-middle tokens (such as Qwen2.5-Coder, StarCoder, "
            "CodeLlama, DeepSeek-Coder or Codestral); this model has none",
            param=param,
        )
    context = _context(engine, family, extra or [], repo, path) if extra or repo else ""
    if family.middle is None:
        return f"{context}{family.suffix}{suffix}{family.prefix}{prefix}"
    if family.spaced:
        return f"{context}{family.prefix} {prefix} {family.suffix}{suffix} {family.middle}"
    if family.name == "codellama-hf":  # "▁<SUF>" already carries the space before <SUF>
        return f"{context}{family.prefix} {prefix}{family.suffix}{suffix}{family.middle}"
    return f"{context}{family.prefix}{prefix}{family.suffix}{suffix}{family.middle}"


def fim_stops(engine: ChatEngine) -> list[str]:
    """The texts of the tokens that end a middle for this model (empty for a model without FIM tokens)."""
    family = fim_family(engine)
    return [] if family is None else [token for token in family.ends if _has(engine, token)]


def fim_stop_ids(engine: ChatEngine) -> frozenset[int]:
    """The ids of the tokens that end a middle or a raw completion.

    Special tokens are dropped from generated text, so they must stop generation by id: the model's EOS ids do
    not always cover them (Qwen2.5-Coder-Instruct's EOS is <|im_end|> alone, not <|endoftext|>).
    """
    ids = (engine.token_id(token) for token in fim_stops(engine))
    return frozenset(token for token in ids if token is not None)


def stop_at_fim_ends(chat: PreparedChat) -> PreparedChat:
    """The prepared request, ending also at the model's FIM end tokens (by id)."""
    ids = fim_stop_ids(chat.engine)
    if ids:
        chat.params = replace(chat.params, stop_token_ids=chat.params.stop_token_ids | ids)
    return chat


def suffix_stop(suffix: str) -> str | None:
    """The suffix's next non-blank line (after a newline) as a stop sequence, when the cursor ends its line.

    Small code models often write the middle and then carry on into the suffix they were shown; once the
    middle reaches the suffix's next line it is complete (editors' clients trim the same way). A cursor in
    the middle of a line (`)` after it) gives no stop: that text is too common to end on.
    """
    head, newline, rest = suffix.partition("\n")
    if not newline or head.strip():
        return None
    line = next((line for line in rest.split("\n") if line.strip()), None)
    return None if line is None else "\n" + line.rstrip()
