"""load_sparse_state_dict: a dense skeleton + a saved SAO state dict -> the sparse model.

Round trips through torch.save / torch.load(weights_only=True) and safetensors (save_file,
save_model) with exact equality of state, outputs and gradients; every property of the
replaced modules kept; every error case with its message; no random init on the way.
"""

import sys

import pytest
import torch
from safetensors.torch import load_file, save_file, save_model
from torch import nn

import sao_kernels as sk
from sao_kernels.serialization import load_sparse_state_dict


class Net(nn.Module):
    """Two convs, a BatchNorm, three linears; ``shared`` sits at two paths when share=True."""

    def __init__(self, share: bool = True, **kw) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(8, 16, 3, padding=1, **kw)
        self.conv2 = nn.Conv2d(16, 16, 3, stride=2, padding=1, bias=False, padding_mode="circular", **kw)
        self.norm = nn.BatchNorm2d(16, **kw)
        self.fc1 = nn.Linear(256, 32, **kw)
        self.shared = nn.Linear(32, 32, bias=False, **kw)
        self.tail = nn.Sequential(nn.Tanh(), self.shared if share else nn.Linear(32, 32, bias=False, **kw))
        self.head = nn.Linear(32, 10, **kw)  # stays dense

    def forward(self, x):
        x = torch.tanh(self.norm(self.conv2(torch.tanh(self.conv1(x)))))
        x = torch.tanh(self.fc1(x.flatten(1)))
        return self.head(self.tail(self.shared(x)))


def freeze_and_eval(net: nn.Module) -> nn.Module:
    """What the user's code does to the skeleton and the trained model alike."""
    net.fc1.requires_grad_(False)
    net.conv2.eval()
    return net


def trained_sparse_net(share: bool = True, dtype=torch.float32) -> Net:
    """A Net whose convs and linears (not head) are SAO layers with different G and block
    sizes, with values, biases and BatchNorm statistics moved away from their init."""
    torch.manual_seed(0)
    net = Net(share, dtype=dtype)
    gen = torch.Generator().manual_seed(1)
    common = {"generator": gen, "dtype": dtype}
    net.conv1 = sk.SAOConv2d(8, 16, 3, padding=1, groups=2, block_size=4, **common)
    net.conv2 = sk.SAOConv2d(
        16, 16, 3, stride=2, padding=1, bias=False, padding_mode="circular", groups=4, block_size=2, **common
    )
    net.fc1 = sk.SAOLinear(256, 32, groups=8, block_size=2, **common)
    net.shared = sk.SAOLinear(32, 32, bias=False, groups=4, **common)
    net.tail[1] = net.shared if share else sk.SAOLinear(32, 32, bias=False, groups=2, **common)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=dtype))
        net(torch.randn(4, 8, 8, 8, generator=gen, dtype=dtype))  # BatchNorm running statistics
    return freeze_and_eval(net)


def save_and_load(net: nn.Module, how: str, tmp_path) -> dict:
    path = tmp_path / "ckpt"
    if how == "torch":
        torch.save(net.state_dict(), path)
        return torch.load(path, weights_only=True)
    if how == "safetensors.save_file":
        save_file(net.state_dict(), path)
    else:  # save_model: what safetensors asks for when tensors are shared; stores them once
        save_model(net, str(path))
    return load_file(path)


def assert_same_model(loaded: nn.Module, ref: nn.Module) -> None:
    loaded_modules, ref_modules = dict(loaded.named_modules()), dict(ref.named_modules())
    assert loaded_modules.keys() == ref_modules.keys()
    for name, module in ref_modules.items():
        other = loaded_modules[name]
        assert type(other) is type(module), name
        assert other.training == module.training, name
        if isinstance(module, (sk.SAOLinear, sk.SAOConv2d)):
            assert (other.groups, other.block_size) == (module.groups, module.block_size), name
            assert other.extra_repr() == module.extra_repr(), name  # shapes, stride, padding, dilation, mode
    for (name, p), (name_ref, p_ref) in zip(loaded.named_parameters(), ref.named_parameters()):
        assert name == name_ref and p.requires_grad == p_ref.requires_grad, name
    state, ref_state = loaded.state_dict(), ref.state_dict()
    assert state.keys() == ref_state.keys()
    for key, value in ref_state.items():
        assert state[key].dtype == value.dtype and torch.equal(state[key], value), key


def assert_same_function(loaded: nn.Module, ref: nn.Module, dtype) -> None:
    x = torch.randn(3, 8, 8, 8, dtype=dtype, generator=torch.Generator().manual_seed(2))
    for net in (loaded, ref):
        net.eval()
        net.zero_grad()
    y, y_ref = loaded(x), ref(x)
    assert torch.equal(y, y_ref)
    y.square().sum().backward()
    y_ref.square().sum().backward()
    for (name, p), (_, p_ref) in zip(loaded.named_parameters(), ref.named_parameters()):
        assert (p.grad is None) == (p_ref.grad is None), name
        assert p.grad is None or torch.equal(p.grad, p_ref.grad), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "how, share", [("torch", True), ("safetensors.save_file", False), ("safetensors.save_model", True)]
)
def test_round_trip_is_exact(how, share, dtype, tmp_path):
    trained = trained_sparse_net(share, dtype)
    state_dict = save_and_load(trained, how, tmp_path)
    skeleton = freeze_and_eval(Net(share, dtype=dtype))
    result = load_sparse_state_dict(skeleton, state_dict)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert (skeleton.tail[1] is skeleton.shared) == share
    assert_same_model(skeleton, trained)
    assert_same_function(skeleton, trained, dtype)


def test_no_random_init_is_run(monkeypatch):
    state_dict = trained_sparse_net().state_dict()

    def refuse(*args, **kwargs):
        raise AssertionError("a random SAO init ran")

    for name, module in list(sys.modules.items()):  # wherever the layers import it from
        if name.startswith("sao_kernels") and hasattr(module, "sao_blocks"):
            monkeypatch.setattr(module, "sao_blocks", refuse)
    for name in ("randperm", "randn", "rand"):
        monkeypatch.setattr(torch, name, refuse)
    monkeypatch.setattr(torch.linalg, "qr", refuse)
    load_sparse_state_dict(freeze_and_eval(Net()), state_dict)


def test_meta_skeleton_with_assign_takes_the_tensors():
    trained = trained_sparse_net()
    state_dict = trained.state_dict()
    with torch.device("meta"):
        skeleton = freeze_and_eval(Net())
    load_sparse_state_dict(skeleton, state_dict, assign=True)
    assert (
        skeleton.fc1.values.device.type == "cpu"
        and skeleton.fc1.values.data_ptr() == state_dict["fc1.values"].data_ptr()
    )
    assert_same_model(skeleton, trained)
    assert_same_function(skeleton, trained, torch.float32)


def test_meta_skeleton_without_assign_is_refused():
    with torch.device("meta"):
        skeleton = Net()
    with pytest.raises(
        ValueError, match=r"'conv1' is on the meta device, where nothing can be copied; pass assign=True"
    ):
        load_sparse_state_dict(skeleton, trained_sparse_net().state_dict())
    assert type(skeleton.conv1) is nn.Conv2d


def test_the_skeleton_dtype_is_kept():
    state_dict = trained_sparse_net(dtype=torch.float32).state_dict()
    skeleton = Net(dtype=torch.float64)
    load_sparse_state_dict(skeleton, state_dict)
    for name in ("conv1", "conv2", "fc1", "shared"):
        layer = getattr(skeleton, name)
        assert layer.values.dtype == torch.float64 and layer.in_index.dtype == torch.int64
        assert torch.equal(layer.values, state_dict[f"{name}.values"].double())


def test_existing_sao_layers_are_rebuilt_to_the_checkpoint():
    trained = trained_sparse_net()
    skeleton = freeze_and_eval(Net())
    skeleton.fc1 = sk.SAOLinear(256, 32, groups=2, generator=torch.Generator().manual_seed(5))  # another G
    freeze_and_eval(skeleton)
    load_sparse_state_dict(skeleton, trained.state_dict())
    assert skeleton.fc1.groups == 8
    assert_same_model(skeleton, trained)


def test_a_module_with_a_tensor_named_values_loads_as_is():
    class Table(nn.Module):
        def __init__(self):
            super().__init__()
            self.values = nn.Parameter(torch.randn(3, 4))
            self.register_buffer("in_index", torch.arange(4))

    model, saved = nn.Sequential(Table()), nn.Sequential(Table())
    load_sparse_state_dict(model, saved.state_dict())
    assert torch.equal(model[0].values, saved[0].values)


def test_strict_false_reports_and_bias_follows_the_checkpoint():
    state_dict = dict(trained_sparse_net().state_dict())
    del state_dict["conv1.bias"], state_dict["head.weight"]
    skeleton = freeze_and_eval(Net())
    result = load_sparse_state_dict(skeleton, state_dict, strict=False)
    assert result.missing_keys == ["head.weight"] and result.unexpected_keys == []
    assert isinstance(skeleton.conv1, sk.SAOConv2d) and skeleton.conv1.bias is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_skeleton_device_is_kept():
    trained = trained_sparse_net()
    skeleton = freeze_and_eval(Net(device="cuda"))
    load_sparse_state_dict(skeleton, trained.state_dict())
    assert all(t.device.type == "cuda" for t in skeleton.state_dict().values())
    trained.cuda().eval()
    skeleton.eval()
    x = torch.randn(3, 8, 8, 8, device="cuda")
    torch.testing.assert_close(skeleton(x), trained(x), atol=0, rtol=0)


# ------------------------------------------------------------------------------ errors
def _without(state_dict, *keys):
    return {k: v for k, v in state_dict.items() if k not in keys}


def _edit(key, value):
    def edit(sd):
        return {**sd, key: value(sd[key]) if callable(value) else value}

    return edit


def _replace(name, module):
    def edit(net):
        setattr(net, name, module)

    return edit


def _sao_at(prefix, groups=4, bias=True):
    def edit(sd):
        layer = sk.SAOLinear(32, 32, bias, groups=groups, generator=torch.Generator().manual_seed(3))
        return {**sd, **{f"{prefix}.{k}": v for k, v in layer.state_dict().items()}}

    return edit


ERRORS = [
    # (checkpoint edit, skeleton edit, exception, message)
    (
        lambda sd: _without(sd, "fc1.in_index"),
        None,
        ValueError,
        (
            r"'fc1' holds fc1.out_index, fc1.values but not fc1.in_index; an SAO layer is stored as fc1.values, "
            r"fc1.in_index, fc1.out_index \(and optionally fc1.bias\)"
        ),
    ),
    (
        None,
        _replace("fc1", nn.Embedding(32, 256)),
        ValueError,
        (
            r"holds an SAO linear layer 32x256 \(out x in, G=8\) for 'fc1', where the model has an Embedding; only "
            r"nn.Linear and nn.Conv2d"
        ),
    ),
    (
        None,
        _replace("fc1", nn.Linear(256, 48)),
        ValueError,
        r"holds an SAO linear layer 32x256 \(out x in, G=8\) for 'fc1', where the model has a Linear 48x256",
    ),
    (
        None,
        _replace("conv1", nn.Linear(8, 16)),
        ValueError,
        r"holds an SAO 3x3 convolution 16x8 \(out x in, G=2\) for 'conv1', where the model has a Linear$",
    ),
    (None, _replace("conv1", nn.Conv2d(8, 16, 5, padding=2)), ValueError, r"kernel_size=\(5, 5\)"),
    (
        None,
        _replace("conv1", nn.Conv2d(8, 16, 3, padding=1, groups=2)),
        ValueError,
        r"where the model has an nn.Conv2d with groups=2; only groups=1",
    ),
    (None, _replace("fc1", nn.Bilinear(256, 256, 32)), ValueError, r"where the model has a Bilinear"),
    (
        _edit("fc1.in_index", lambda t: torch.zeros_like(t)),
        None,
        ValueError,
        r"'fc1' is not a valid SAO layer: in_index must be a permutation of range\(256\)",
    ),
    (
        _edit("fc1.in_index", lambda t: t.float()),
        None,
        ValueError,
        (
            r"fc1.in_index is float32 of shape \(256,\); expected int64 of shape \(256,\) to match fc1.values of "
            r"shape \(8, 4, 32\) \(G=8\)"
        ),
    ),
    (
        _edit("fc1.values", lambda t: t[..., None]),
        None,
        ValueError,
        r"fc1.values has shape \(8, 4, 32, 1\); expected \(G, m/G, n/G\) for a linear layer",
    ),
    (_edit("fc1.bias", lambda t: t[:16]), None, ValueError, r"fc1.bias has shape \(16,\); expected \(32,\)"),
    (_edit("fc1.values", lambda t: t.long()), None, ValueError, r"fc1.values has dtype int64; expected a floating"),
    (lambda sd: _without(sd, "head.weight"), None, RuntimeError, r"missing key\(s\): head.weight$"),
    (lambda sd: _without(sd, "conv1.bias"), None, RuntimeError, r"missing key\(s\): conv1.bias$"),
    (
        _sao_at("extra"),
        None,
        RuntimeError,
        r"unexpected key\(s\): extra.bias, extra.in_index, extra.out_index, extra.values$",
    ),
    (
        _edit("head.weight", lambda t: t[:5]),
        None,
        RuntimeError,
        r"size mismatch for head.weight: the state dict has shape \(5, 32\), the model \(10, 32\)",
    ),
    (
        _edit("tail.1.values", lambda t: t + 1),
        None,
        ValueError,
        r"shared.values and tail.1.values name the same tensor in the model .* but hold different values",
    ),
    (
        _sao_at("tail.1", groups=2, bias=False),
        None,
        ValueError,
        (
            r"'tail.1' is shared with 'shared' in the model, but the checkpoint holds an SAO linear layer 32x32 "
            r"\(out x in, G=4\) there and an SAO linear layer 32x32 \(out x in, G=2\) here"
        ),
    ),
]


@pytest.mark.parametrize("edit_checkpoint, edit_skeleton, error, message", ERRORS)
def test_a_checkpoint_that_does_not_fit_fails_before_changing_the_model(edit_checkpoint, edit_skeleton, error, message):
    state_dict = trained_sparse_net().state_dict()
    if edit_checkpoint is not None:
        state_dict = edit_checkpoint(state_dict)
    skeleton = Net()
    if edit_skeleton is not None:
        edit_skeleton(skeleton)
    before = {name: type(m) for name, m in skeleton.named_modules()}
    with pytest.raises(error, match=message):
        load_sparse_state_dict(skeleton, state_dict)
    assert {name: type(m) for name, m in skeleton.named_modules()} == before


def test_the_out_proj_of_multihead_attention_is_refused():
    saved = nn.ModuleDict({"attn": nn.MultiheadAttention(32, 4)})
    saved.attn.out_proj = sk.SAOLinear(32, 32, groups=4)
    with pytest.raises(ValueError, match=r"'attn.out_proj', the out_proj of an nn.MultiheadAttention"):
        load_sparse_state_dict(nn.ModuleDict({"attn": nn.MultiheadAttention(32, 4)}), saved.state_dict())


def test_an_sao_layer_at_the_root_is_refused():
    with pytest.raises(ValueError, match=r"for the root module, which cannot be replaced in place; wrap it"):
        load_sparse_state_dict(nn.Linear(32, 32), sk.SAOLinear(32, 32, groups=4).state_dict())


def test_bad_arguments():
    with pytest.raises(TypeError, match="model must be an nn.Module, got dict"):
        load_sparse_state_dict({}, {})
    with pytest.raises(TypeError, match="state_dict must be a mapping of names to tensors, got list"):
        load_sparse_state_dict(Net(), [])
