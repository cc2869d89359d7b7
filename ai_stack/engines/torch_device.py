"""Where and in what number format a torch model runs: device, dtype, bitsandbytes, fp16 packing on CPU."""

from __future__ import annotations

import logging
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
    """Swap every plain nn.Linear of model for a PackedFP16Linear, one at a time; the rest goes to float32.

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
    # nn.Module's own float(): transformers refuses float() on a bitsandbytes model, whose 4-bit weights
    # (uint8, not floating point) this leaves as they are.
    torch.nn.Module.float(model)
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


FOUR_BIT = ("nf4", "fp4")  # bitsandbytes' 4-bit formats: CUDA, CPU and (where bitsandbytes has it) MPS


def import_bitsandbytes() -> Any:
    """Import bitsandbytes without its CPU notice about an optional kernel that only a hub download adds."""
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    import bitsandbytes

    return bitsandbytes


def bitsandbytes_problem(device: str) -> str | None:
    """Why bitsandbytes' 4-bit layers cannot run on `device` here, or None when they can."""
    if not (device == "cpu" or device == "mps" or device.startswith("cuda")):
        return f"bitsandbytes has no 4-bit kernels for device {device!r}"
    try:
        import_bitsandbytes()
    except Exception as exc:  # an ImportError, or a native library that fails as it loads
        return f"bitsandbytes does not import here ({exc}); pip install bitsandbytes==0.50.2"
    if device == "cpu":
        from bitsandbytes.cextension import ErrorHandlerMockBNBNativeLibrary, lib

        if isinstance(lib, ErrorHandlerMockBNBNativeLibrary):
            return "bitsandbytes' native CPU library did not load on this machine"
    if device == "mps" and not hasattr(torch.ops.bitsandbytes, "gemm_4bit"):
        return "this bitsandbytes has no MPS kernels"
    return None


def cpu_fuses_4bit() -> bool:
    """Whether bitsandbytes has its fused 4-bit GEMM for this CPU (AVX512-BF16): no de-quantizing per step."""
    if bitsandbytes_problem("cpu") is not None:
        return False
    from bitsandbytes.functional import has_avx512bf16

    return bool(has_avx512bf16())  # type: ignore[no-untyped-call]


def resolve_quantization(requested: str, device: str) -> str:
    """Resolve 'auto': NF4 on CPUs where bitsandbytes fuses 4-bit GEMMs (measured faster), else none.

    The catalog's loader keeps models converted from a GGUF unquantized under 'auto' (too lossy there).
    """
    if requested != "auto":
        return requested
    return "nf4" if device == "cpu" and cpu_fuses_4bit() else "none"


def quantization_config(
    quantization: str, device: str, dtype: torch.dtype, double_quant: bool | None = None
) -> Any:
    """A BitsAndBytesConfig: nf4/fp4 on CUDA, CPU and MPS, int8 on CUDA; a clear error anywhere else.

    `double_quant` (None: on CUDA only) also quantizes the 4-bit blocks' scales. 4-bit layers compute in
    `dtype` on CUDA and MPS and in bf16 on CPU, the only dtype of bitsandbytes' fused CPU kernel.
    """
    if quantization == "none":
        return None
    if quantization not in FOUR_BIT and not device.startswith("cuda"):
        raise EngineLoadError(
            f"quantization {quantization!r} uses bitsandbytes and needs an NVIDIA GPU with CUDA; "
            f'this machine would run the model on {device!r}. Use "nf4" or "fp4" (4-bit, CUDA, CPU, MPS), '
            'or set quantization = "none" to load it as is.'
        )
    problem = bitsandbytes_problem(device)
    if problem is not None:
        raise EngineLoadError(f"quantization {quantization!r}: {problem}")
    from transformers import BitsAndBytesConfig

    if quantization in FOUR_BIT:
        return BitsAndBytesConfig(  # type: ignore[no-untyped-call]
            load_in_4bit=True,
            bnb_4bit_quant_type=quantization,
            bnb_4bit_compute_dtype=torch.bfloat16 if device == "cpu" else dtype,
            bnb_4bit_use_double_quant=device.startswith("cuda") if double_quant is None else double_quant,
        )
    return BitsAndBytesConfig(load_in_8bit=True)  # type: ignore[no-untyped-call]


def unfuse_odd_4bit_linears(model: torch.nn.Module) -> int:
    """Keep 4-bit layers whose output size is not a multiple of 32 off bitsandbytes' fused CPU kernel.

    The kernel's weight layout needs it (an assertion at the first forward pass otherwise); such layers
    de-quantize their weight at each call instead. Returns how many layers were changed.
    """
    changed = 0
    for module in model.modules():
        if (
            getattr(module, "support_avx512bf16_for_cpu", False)
            and int(getattr(module, "out_features", 0)) % 32
        ):
            module.support_avx512bf16_for_cpu = False  # type: ignore[assignment]
            changed += 1
    return changed
