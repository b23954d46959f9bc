"""Spatio-temporal adapters: identity at init, real gradients, the CPU Conv3d path equals F.conv3d."""

import torch
import torch.nn.functional as F

from grove.model.adapters import SpatioTemporalAdapter, conv3d_same


def test_adapter_is_the_identity_at_init_and_alpha_is_zero():
    adapter = SpatioTemporalAdapter(8)
    x = torch.randn(2, 8, 4, 5, 6)
    assert adapter.alpha.item() == 0.0
    torch.testing.assert_close(adapter(x), x)
    tokens = torch.randn(2 * 4, 5, 6, 8)
    torch.testing.assert_close(adapter.forward_grid(tokens, 4), tokens)


def test_adapter_gets_gradients_and_then_acts():
    adapter = SpatioTemporalAdapter(8)
    x = torch.randn(1, 8, 4, 5, 5)
    target = torch.randn_like(x)
    ((adapter(x) - target) ** 2).mean().backward()
    assert adapter.alpha.grad is not None and adapter.alpha.grad.abs().item() > 0
    opt = torch.optim.SGD(adapter.parameters(), lr=0.5)
    opt.step()
    opt.zero_grad()
    assert adapter.alpha.item() != 0.0
    ((adapter(x) - target) ** 2).mean().backward()
    assert adapter.conv.weight.grad.abs().sum().item() > 0
    assert not torch.allclose(adapter(x), x)


def test_adapter_mixes_time():
    adapter = SpatioTemporalAdapter(4)
    with torch.no_grad():
        adapter.alpha.fill_(1.0)
        adapter.conv.bias.zero_()
        adapter.conv.weight.abs_()  # positive weights on a positive frame: ReLU keeps the response
    x = torch.zeros(1, 4, 5, 3, 3)
    x[:, :, 2] = torch.rand(4, 3, 3) + 0.1
    changed = (adapter(x) - x).abs().sum(dim=(0, 1, 3, 4))
    # a 3x3x3 kernel spreads frame 2 into frames 1 and 3 only
    assert changed[0] == 0 and changed[4] == 0 and changed[1] > 0 and changed[3] > 0


def test_cpu_conv_path_equals_conv3d_in_value_and_gradient():
    x = torch.randn(2, 6, 5, 4, 7, requires_grad=True)
    weight = torch.randn(6, 6, 3, 3, 3, requires_grad=True)
    bias = torch.randn(6, requires_grad=True)
    ours = conv3d_same(x, weight, bias)
    reference = F.conv3d(x, weight, bias, padding=1)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)
    grad = torch.randn_like(ours)
    ours_grads = torch.autograd.grad(ours, (x, weight, bias), grad)
    reference_grads = torch.autograd.grad(reference, (x, weight, bias), grad)
    for a, b in zip(ours_grads, reference_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)
