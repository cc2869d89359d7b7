"""Where and in what number format a torch model runs: device, dtype, bitsandbytes, fp16 packing on CPU."""

from __future__ import annotations

from typing import Any

import torch

from ai_stack.engines.base import EngineLoadError


def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bf16 units (AVX512-BF16 or AMX), where bf16 matmuls batch well."""
    return torch.backends.cpu.get_cpu_capability() in ("AVX512_BF16", "AMX")


def cpu_packs_fp16() -> bool:
    """Whether fbgemm's fp16-weight GEMM runs here (x86 with AVX2): the fast CPU path for linear layers."""
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        return False
    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512", "AVX512_BF16", "AMX")


class PackedFP16Linear(torch.nn.Module):
    """A linear layer with its weight packed in fp16 for fbgemm: float32 in and out, half the weight traffic.

    On CPUs without bf16 units, PyTorch's bf16 matmul is fast for one row but nearly linear in the number of
    rows, so a batch of decode steps costs almost as much as running them one by one; fbgemm's fp16 GEMM
    reads the same 2 bytes per weight and batches like float32.
    """

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        bias = None if linear.bias is None else linear.bias.detach().float()
        self.packed = torch.ops.quantized.linear_prepack_fp16(linear.weight.detach().float(), bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x @ W.T + b with the packed weight."""
        out: torch.Tensor = torch.ops.quantized.linear_dynamic_fp16(x, self.packed)
        return out

    def extra_repr(self) -> str:
        """Shown by print(model)."""
        return f"in_features={self.in_features}, out_features={self.out_features}, fp16 packed (fbgemm)"


def pack_fp16_linears(model: torch.nn.Module) -> int:
    """Swap every nn.Linear of model for a PackedFP16Linear, one at a time; the rest goes to float32.

    Only (parent, name) pairs are held, so each original weight is freed as soon as its layer is packed:
    peak memory stays near the model's loaded size.
    """
    targets = [
        (parent, name)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is torch.nn.Linear
    ]
    for parent, name in targets:
        setattr(parent, name, PackedFP16Linear(getattr(parent, name)))
    model.float()
    return len(targets)


def pick_device(requested: str) -> str:
    """Resolve 'auto' to cuda, mps or cpu; refuse a device this machine lacks."""
    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise EngineLoadError(f"device {requested!r} was asked for, but no CUDA GPU is available here")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise EngineLoadError("device 'mps' was asked for, but Apple's MPS backend is not available here")
    return requested


def pick_dtype(requested: str, device: str) -> torch.dtype:
    """Resolve 'auto': bf16 on CUDA (fp16 on old GPUs), fp16 on MPS; on CPU see cpu_dtype."""
    if requested != "auto":
        return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[requested]
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "mps":
        return torch.float16
    return cpu_dtype()


def cpu_dtype() -> torch.dtype:
    """bf16 on CPUs with bf16 units, fp16 (packed for fbgemm) on other x86 CPUs with AVX2, else float32."""
    if cpu_supports_bf16():
        return torch.bfloat16
    return torch.float16 if cpu_packs_fp16() else torch.float32


def quantization_config(quantization: str, device: str, dtype: torch.dtype) -> Any:
    """A BitsAndBytesConfig for nf4/int8 on CUDA; a clear error anywhere else."""
    if quantization == "none":
        return None
    if not device.startswith("cuda"):
        raise EngineLoadError(
            f"quantization {quantization!r} uses bitsandbytes and needs an NVIDIA GPU with CUDA; "
            f'this machine would run the model on {device!r}. Set quantization = "none" to load it as is.'
        )
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError as exc:
        raise EngineLoadError(
            f"quantization {quantization!r} needs bitsandbytes: pip install 'ai-stack[cuda]' ({exc})"
        ) from None
    if quantization == "nf4":
        return BitsAndBytesConfig(  # type: ignore[no-untyped-call]
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=True,
        )
    return BitsAndBytesConfig(load_in_8bit=True)  # type: ignore[no-untyped-call]
