"""Device and dtype (ai_stack/engines/torch_device.py): the automatic dtype, the packed fp16 linear, 4-bit."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from ai_stack.config import ModelSpec
from ai_stack.engines import torch_device
from ai_stack.engines.base import EngineLoadError
from ai_stack.engines.catalog import TransformersOptions
from ai_stack.engines.torch_device import (
    PackedFP16Linear,
    bitsandbytes_problem,
    cpu_fuses_4bit,
    cpu_packs_fp16,
    cpu_supports_bf16,
    pick_dtype,
    quantization_config,
    resolve_quantization,
)


def test_auto_dtype_on_cpu() -> None:
    expected = torch.bfloat16 if cpu_supports_bf16() else torch.float16 if cpu_packs_fp16() else torch.float32
    assert pick_dtype("auto", "cpu") == expected
    assert pick_dtype("float32", "cpu") == torch.float32


needs_fbgemm = pytest.mark.skipif(not cpu_packs_fp16(), reason="fbgemm fp16 GEMM needs an x86 CPU with AVX2")


@needs_fbgemm
def test_packed_fp16_linear_is_a_linear_with_fp16_weights() -> None:
    linear = torch.nn.Linear(64, 48)
    packed = PackedFP16Linear(linear)
    x = torch.randn(2, 3, 64)
    expected = torch.nn.functional.linear(x, linear.weight.half().float(), linear.bias)
    got = packed(x)
    assert got.shape == (2, 3, 48) and got.dtype == torch.float32
    assert torch.allclose(got, expected, atol=1e-4)
    assert packed.out_features == 48 and "fp16 packed" in repr(packed)


# --- 4-bit weights (bitsandbytes) and quantization = "auto" (issue 21) ----------------------------------


def test_auto_quantization_is_nf4_only_on_cpus_where_bitsandbytes_fuses_4bit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for value in ("none", "nf4", "fp4", "int8"):
        assert resolve_quantization(value, "cpu") == value  # explicit values pass through
    monkeypatch.setattr(torch_device, "cpu_fuses_4bit", lambda: True)
    assert resolve_quantization("auto", "cpu") == "nf4"
    assert resolve_quantization("auto", "cuda") == "none" and resolve_quantization("auto", "mps") == "none"
    monkeypatch.setattr(torch_device, "cpu_fuses_4bit", lambda: False)
    assert resolve_quantization("auto", "cpu") == "none"


def test_cpu_fuses_4bit_needs_bitsandbytes(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> None:
        raise ImportError("No module named 'bitsandbytes'")

    monkeypatch.setattr(torch_device, "import_bitsandbytes", missing)
    problem = bitsandbytes_problem("cpu")
    assert problem is not None and "does not import" in problem and "pip install bitsandbytes" in problem
    assert not cpu_fuses_4bit()
    assert resolve_quantization("auto", "cpu") == "none"
    with pytest.raises(EngineLoadError, match="quantization 'nf4': bitsandbytes does not import"):
        quantization_config("nf4", "cpu", torch.float16)


def test_quantization_config_for_cpu_and_cuda() -> None:
    pytest.importorskip("bitsandbytes")
    assert quantization_config("none", "cpu", torch.float32) is None
    for quant_type in ("nf4", "fp4"):
        config = quantization_config(quant_type, "cpu", torch.float16)
        assert config.load_in_4bit and config.bnb_4bit_quant_type == quant_type
        assert config.bnb_4bit_compute_dtype == torch.bfloat16  # bitsandbytes' CPU kernels compute in bf16
        assert not config.bnb_4bit_use_double_quant  # by default only on CUDA
    assert quantization_config("nf4", "cpu", torch.float32, double_quant=True).bnb_4bit_use_double_quant
    cuda = quantization_config("nf4", "cuda", torch.float16)
    assert cuda.bnb_4bit_use_double_quant and cuda.bnb_4bit_compute_dtype == torch.float16  # as before
    assert quantization_config("int8", "cuda", torch.float16).load_in_8bit
    with pytest.raises(EngineLoadError, match="needs an NVIDIA GPU with CUDA") as refused:
        quantization_config("int8", "cpu", torch.float32)
    assert '"nf4" or "fp4"' in str(refused.value) and 'quantization = "none"' in str(refused.value)


def test_config_accepts_the_new_quantization_values_and_the_double_quant_option() -> None:
    for value in ("none", "auto", "nf4", "fp4", "int8"):
        assert ModelSpec(id="m", source="x", quantization=value).quantization == value
    assert ModelSpec(id="m", source="x").quantization == "none"  # unchanged default
    with pytest.raises(ValidationError, match="quantization"):
        ModelSpec(id="m", source="x", quantization="nf8")
    spec = ModelSpec(id="m", source="x", options={"double_quant": True})
    assert TransformersOptions.model_validate(spec.options).double_quant is True
    assert TransformersOptions().double_quant is None
    with pytest.raises(ValidationError, match="double_quant"):
        ModelSpec(id="m", source="x", options={"double_quant": "yes"})
