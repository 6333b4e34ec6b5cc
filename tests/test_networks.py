import pytest
import torch
import torch.nn as nn
import torchvision

from networks.resnet_big import (MODEL_NAMES, LinearClassifier, SupCEResNet, SupConResNet,
                                 build_trunk, default_stem)

EXPANSION = {'resnet18': 1, 'resnet34': 1, 'resnet50': 4, 'resnet101': 4}


@pytest.mark.parametrize('stem', ['cifar', 'imagenet'])
@pytest.mark.parametrize('name', MODEL_NAMES)
def test_trunk_shapes(name, stem):
    width = 8
    trunk = build_trunk(name, stem=stem, width=width)
    assert trunk.feat_dim == 8 * width * EXPANSION[name]
    out = trunk(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, trunk.feat_dim)


def test_feat_dim_at_default_width():
    assert build_trunk('resnet18').feat_dim == 512
    assert build_trunk('resnet50').feat_dim == 2048


def test_width_scaling_and_in_channels():
    trunk = build_trunk('resnet18', width=16, in_channels=1)
    assert trunk.feat_dim == 128
    assert trunk(torch.randn(2, 1, 32, 32)).shape == (2, 128)


@pytest.mark.parametrize('stem, side', [('cifar', 32), ('imagenet', 8)])
def test_stem_resolution_into_layer1(stem, side):
    trunk = build_trunk('resnet18', stem=stem, width=8)
    shapes = []
    trunk.layer1.register_forward_hook(lambda m, i, o: shapes.append(o.shape))  # returns None
    trunk(torch.randn(2, 3, 32, 32))
    assert shapes[0][-2:] == (side, side)


def test_cifar_stem_maxpool_has_no_params():
    trunk = build_trunk('resnet18', stem='cifar', width=8)
    assert isinstance(trunk.maxpool, nn.Identity)
    assert not any(k.startswith('maxpool') for k in trunk.state_dict())


@pytest.mark.parametrize('name', ['resnet18', 'resnet50'])
def test_matches_torchvision(name):
    torch.manual_seed(0)
    ours = build_trunk(name, stem='imagenet', width=64)
    # Non-trivial BN statistics, so the eval-mode comparison exercises running_mean/var too.
    ours.train()
    with torch.no_grad():
        ours(torch.randn(4, 3, 64, 64))
    ours.eval()
    ref = getattr(torchvision.models, name)()
    result = ref.load_state_dict(ours.state_dict(), strict=False)
    assert sorted(result.missing_keys) == ['fc.bias', 'fc.weight']
    assert result.unexpected_keys == []
    ref.fc = nn.Identity()
    ref.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('head', ['linear', 'mlp'])
def test_supcon_unit_norm(head):
    model = SupConResNet('resnet18', head=head, feat_dim=32, width=8)
    z = model(torch.randn(3, 3, 32, 32))
    assert z.shape == (3, 32)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(3))


def test_supce_and_linear_classifier():
    model = SupCEResNet('resnet18', num_classes=7, width=8, dropout=0.5)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    clf = LinearClassifier(model.encoder.feat_dim, num_classes=7)
    assert clf(torch.randn(2, model.encoder.feat_dim)).shape == (2, 7)


def test_unknown_names_raise():
    with pytest.raises(ValueError, match='resnet18'):
        build_trunk('resnet9')
    with pytest.raises(ValueError):
        SupConResNet('resnet18', head='conv', width=8)
    with pytest.raises(ValueError):
        build_trunk('resnet18', stem='tiny')


def test_default_stem_boundary():
    assert default_stem(32) == 'cifar'
    assert default_stem(64) == 'cifar'
    assert default_stem(65) == 'imagenet'
    assert default_stem(224) == 'imagenet'


@pytest.mark.parametrize('model', [SupConResNet('resnet18', width=8),
                                   SupCEResNet('resnet18', width=8)])
def test_trunk_under_encoder_prefix(model):
    trunk_keys = {k for k in model.state_dict() if k.startswith('encoder.')}
    assert trunk_keys == {'encoder.' + k for k in model.encoder.state_dict()}
    assert all(k.startswith(('encoder.', 'head.', 'fc.')) for k in model.state_dict())
