"""Device and dtype (ai_stack/engines/torch_device.py): the automatic dtype, the packed fp16 linear."""

from __future__ import annotations

import pytest
import torch

from ai_stack.engines.torch_device import PackedFP16Linear, cpu_packs_fp16, cpu_supports_bf16, pick_dtype


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
