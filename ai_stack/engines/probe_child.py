"""The child process of the native engine check (ai_stack/engines/probe.py): load a model, decode one token.

Run as `python -m ai_stack.engines.probe_child` with the job (config, model, options) as JSON on stdin; it
prints one JSON line and exits 0, or ERROR_EXIT after a Python error. A native fault kills it instead.
"""

from __future__ import annotations

import ctypes
import faulthandler
import json
import logging
import os
import sys
import threading

from ai_stack.config import Config, ModelSpec
from ai_stack.engines.base import SamplingParams
from ai_stack.engines.catalog import LlamaCppOptions
from ai_stack.engines.probe import ERROR_EXIT, FAULT_ENV


def main() -> int:
    """The child process: load the model from the job on stdin, decode one token, print one JSON line."""
    faulthandler.enable()  # a native fault prints the Python stack to stderr, which the parent reports
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    job = json.loads(sys.stdin.read())
    config = Config.model_validate(job["config"])
    spec = ModelSpec.model_validate(job["spec"])
    options = LlamaCppOptions.model_validate(job["options"])
    fault = os.environ.get(FAULT_ENV, "")
    if fault == "segv" or (fault == "segv-repack" and options.repack):
        ctypes.string_at(0)  # a read of address 0: SIGSEGV, as a fault in native code
    try:
        from ai_stack.engines.llamacpp import load

        engine = load(spec, config, options)
        try:
            prompt = engine.encode("Hello")
            engine.generate(
                prompt, SamplingParams(max_tokens=1, temperature=0.0), threading.Event(), lambda _: None
            )
        finally:
            engine.close()
    except Exception as exc:
        print(json.dumps({"error": str(exc) or type(exc).__name__}), flush=True)
        return ERROR_EXIT
    print(json.dumps({"ok": True}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
