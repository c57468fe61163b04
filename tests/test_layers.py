"""Linear as the ONNX exporter writes it: one Gemm per layer, the same outputs."""

from __future__ import annotations

import pytest
import torch

from groupvit.layers import Block


def test_export_writes_linear_layers_as_gemm():
    """Traced for ONNX, each Linear on [B, N, C] becomes one Gemm with its bias inside (not MatMul + Add), and the
    graph still takes any batch and token count."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from groupvit.export import trace

    torch.manual_seed(0)
    block = Block(32, 4).eval()
    proto = trace(torch.nn.Sequential(block), torch.randn(2, 9, 32), ["x"], ["y"], {"x": {0: "batch", 1: "tokens"}}, 17)
    ops = [node.op_type for node in proto.graph.node]
    assert ops.count("Gemm") == 4  # qkv, proj, fc1, fc2
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 5, 32)
    (y,) = session.run(None, {"x": x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(y), block(x), atol=1e-5, rtol=1e-5)
    onnx.checker.check_model(proto)  # raises on an invalid graph
