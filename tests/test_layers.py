"""Linear's fused CPU inference path (oneDNN, packed weights) against plain PyTorch."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from groupvit.layers import _PACKED, Block, Linear


@pytest.fixture
def layer() -> Linear:
    torch.manual_seed(0)
    return Linear(24, 40).eval()


@pytest.mark.parametrize("bias", [True, False])
def test_fused_linear_matches_f_linear(bias):
    torch.manual_seed(0)
    lin = Linear(24, 40, bias=bias).eval()
    x = torch.randn(3, 7, 24)
    residual = torch.randn(3, 7, 40)
    plain = F.linear(x, lin.weight, lin.bias)
    with torch.no_grad():
        torch.testing.assert_close(lin(x), plain, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lin(x, gelu=True), F.gelu(plain), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lin(x, residual=residual), residual + plain, atol=1e-5, rtol=1e-5)
        # A strided input (TokenMixerMlp feeds a transposed view)
        xt = x.transpose(0, 1).contiguous().transpose(0, 1)
        torch.testing.assert_close(lin(xt), plain, atol=1e-5, rtol=1e-5)
    assert torch.equal(residual, residual.clone())  # the residual is read, not written
    assert lin in _PACKED  # the oneDNN path ran
    # In train mode without autograd (gradient caching's first pass) the plain path runs: no packed copy.
    fresh = Linear(24, 40)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x, gelu=True), F.gelu(F.linear(x, fresh.weight, fresh.bias)))
    assert fresh not in _PACKED


def test_packed_weight_follows_weight_changes(layer):
    """The packed copy is rebuilt after an in-place update, after loading other weights and after a fused
    optimiser step."""
    x = torch.randn(5, 24)
    with torch.no_grad():
        layer(x)  # packs
        layer.weight.mul_(2.0)
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)
        other = Linear(24, 40).eval()
        layer.load_state_dict(other.state_dict())
        torch.testing.assert_close(layer(x), other(x), atol=1e-5, rtol=1e-5)
    # A fused AdamW step writes the weights without bumping their version
    layer.weight.grad, layer.bias.grad = torch.ones_like(layer.weight), torch.ones_like(layer.bias)
    version = layer.weight._version
    torch.optim.AdamW(layer.parameters(), lr=0.1, fused=True).step()
    assert layer.weight._version == version
    with torch.no_grad():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)


def test_autograd_path_and_copies(layer):
    x = torch.randn(5, 24, requires_grad=True)
    with torch.no_grad():
        layer(x)  # the packed copy lives outside the module
    y = layer(x, gelu=True)
    y.sum().backward()
    assert x.grad is not None and layer.weight.grad is not None
    clone = copy.deepcopy(layer)
    assert set(clone.state_dict()) == {"weight", "bias"}
    with pytest.raises(ValueError, match="GELU or a residual add"):
        layer(x, gelu=True, residual=y)


def test_block_fused_eval_equals_training_form():
    """A block in eval (residual adds fused into the products) equals the same block in train mode without drop
    path, and its autograd (plain F.linear) path."""
    torch.manual_seed(0)
    block = Block(32, 4)
    x = torch.randn(2, 9, 32)
    expected = block.train()(x)
    block.eval()
    with torch.no_grad():
        fused = block(x)
    torch.testing.assert_close(fused, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)


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
    assert onnx.checker.check_model(proto) is None
