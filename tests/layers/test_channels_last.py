"""model.to(memory_format=torch.channels_last) on models with SAOConv2d: accepted as nn.Conv2d
accepts it, the values laid out as a channels-last grouped-convolution weight, the forward
(channels-last or contiguous inputs) and gradients equal to the dense reference, and the
state_dict interchangeable with a contiguous layer's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sao_kernels import SAOConv2d, SAOLinear

F64 = torch.float64


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def small_net(seed=0):
    g = gen(seed)
    return nn.Sequential(
        SAOConv2d(4, 8, 3, padding=1, groups=2, generator=g, dtype=F64),
        nn.Tanh(),
        SAOConv2d(8, 8, 3, stride=2, padding=1, padding_mode="circular", groups=4, init="eco", generator=g, dtype=F64),
        nn.Tanh(),
        nn.Flatten(),
        SAOLinear(8 * 3 * 3, 6, groups=3, generator=g, dtype=F64),
    )


def dense_twin(net):
    """The same network with nn.Conv2d / nn.Linear holding each SAO layer's dense weight."""
    layers = []
    for m in net:
        if isinstance(m, SAOConv2d):
            d = nn.Conv2d(
                m.in_channels,
                m.out_channels,
                m.kernel_size,
                m.stride,
                m.padding,
                m.dilation,
                padding_mode=m.padding_mode,
                dtype=F64,
            )
        elif isinstance(m, SAOLinear):
            d = nn.Linear(m.in_features, m.out_features, dtype=F64)
        else:
            layers.append(m)
            continue
        with torch.no_grad():
            d.weight.copy_(m.dense_weight())
            d.bias.copy_(m.bias)
        layers.append(d)
    return nn.Sequential(*layers)


def test_channels_last_model_converts_and_matches_dense():
    net = small_net(1)
    ref = dense_twin(net)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    out = net.to(memory_format=torch.channels_last)
    assert out is net
    for k, v in net.state_dict().items():
        assert v.shape == before[k].shape and torch.equal(v, before[k]), k
    for conv in (net[0], net[2]):
        G, a, c, kh, kw = conv.values.shape
        weight = conv.values.reshape(G * a, c, kh, kw)  # what the grouped convolution reads
        assert weight.is_contiguous(memory_format=torch.channels_last)
        assert weight.data_ptr() == conv.values.data_ptr()  # a view, no copy per forward
    x = torch.randn(2, 4, 6, 6, generator=gen(2), dtype=F64)
    for inp in (x, x.to(memory_format=torch.channels_last)):
        xi = inp.clone().requires_grad_(True)
        xd = inp.clone().requires_grad_(True)
        y, y_ref = net(xi), ref(xd)
        torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
        dy = torch.randn(y.shape, generator=gen(3), dtype=F64)
        y.backward(dy)
        y_ref.backward(dy)
        torch.testing.assert_close(xi.grad, xd.grad, rtol=1e-12, atol=1e-12)
        for m in (net[0], net[2]):
            assert m.values.grad.shape == m.values.shape
        net.zero_grad()
        ref.zero_grad()


def test_nn_conv2d_and_sao_conv2d_accept_and_refuse_the_same_formats():
    dense = nn.Sequential(nn.Conv2d(4, 8, 3))
    sao = nn.Sequential(SAOConv2d(4, 8, 3, groups=2))
    dense.to(memory_format=torch.channels_last)
    sao.to(memory_format=torch.channels_last)
    sao.to(memory_format=torch.contiguous_format)
    assert sao[0].values.is_contiguous()
    for model in (nn.Sequential(nn.Conv2d(4, 8, 3)), nn.Sequential(SAOConv2d(4, 8, 3, groups=2))):
        with pytest.raises(RuntimeError, match="channels_last_3d"):
            model.to(memory_format=torch.channels_last_3d)


def test_state_dict_is_interchangeable_between_memory_formats(tmp_path):
    src = small_net(4).to(memory_format=torch.channels_last)
    dst = small_net(5)
    torch.save(src.state_dict(), tmp_path / "cl.pt")
    dst.load_state_dict(torch.load(tmp_path / "cl.pt", weights_only=True))
    x = torch.randn(1, 4, 6, 6, generator=gen(6), dtype=F64)
    torch.testing.assert_close(dst(x), src(x), rtol=1e-12, atol=1e-12)
    back = small_net(7).to(memory_format=torch.channels_last)
    back.load_state_dict(small_net(4).state_dict())
    assert back[0].values.reshape(8, 2, 3, 3).is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(back(x), src(x), rtol=1e-12, atol=1e-12)


def test_dtype_and_memory_format_together_and_with_grads():
    net = small_net(8)
    x = torch.randn(1, 4, 6, 6, generator=gen(9), dtype=F64)
    net(x).sum().backward()
    net.to(torch.float32, memory_format=torch.channels_last)
    conv = net[0]
    assert conv.values.dtype == conv.values.grad.dtype == torch.float32
    assert conv.values.grad.shape == conv.values.shape
    assert conv.values.reshape(8, 2, 3, 3).is_contiguous(memory_format=torch.channels_last)
    y = net(x.float().to(memory_format=torch.channels_last))
    torch.testing.assert_close(y, dense_twin(small_net(8))(x).float(), rtol=1e-5, atol=1e-5)


def test_swap_tensors_conversion_path():
    flag = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        net = small_net(10)
        values = net[0].values
        net.to(memory_format=torch.channels_last)
        assert net[0].values is values  # swapped in place: optimizers keep their reference
        assert values.reshape(8, 2, 3, 3).is_contiguous(memory_format=torch.channels_last)
        x = torch.randn(1, 4, 6, 6, generator=gen(11), dtype=F64)
        torch.testing.assert_close(net(x), dense_twin(small_net(10))(x), rtol=1e-12, atol=1e-12)
    finally:
        torch.__future__.set_swap_module_params_on_conversion(flag)


def test_to_empty_and_meta_keep_the_5d_shape():
    conv = SAOConv2d(4, 8, 3, groups=2, device="meta")
    conv.to_empty(device="cpu")
    assert conv.values.shape == (2, 4, 2, 3, 3) and conv.values.device.type == "cpu"
    conv.reset_parameters(gen(12))
    x = torch.randn(1, 4, 5, 5, generator=gen(13))
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.dense_weight(), conv.bias))
