"""Published checkpoint layouts: synthetic checkpoints built from our trunks load feature for
feature; an unknown layout is a one-line error naming its keys; the PyTorchVideo export round trip."""
import pytest
import torch

import checkpoint_layouts
import checkpoints
from networks.resnet_big import build_trunk
from util import UserError
from conftest import assert_user_error, run_script


def randomised(trunk, seed=0):
    """A trunk with non-trivial BN statistics, so a swapped norm or shortcut changes the features."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in trunk.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.5 if 'running_var' in name or
                        name.endswith('bn1.weight') else torch.randn(t.shape, generator=g) * 0.1)
    return trunk.eval()


def features(ckpt, x):
    trunk = checkpoints.pretrained_trunk(ckpt, 'test').eval()
    with torch.no_grad():
        return trunk(x)


def supcontrast_names(state, prefix):
    return {prefix + k.replace('downsample.', 'shortcut.'): v for k, v in state.items()}


IMG = [('resnet18', 'cifar', 8, 32), ('resnet50', 'imagenet', 8, 64)]


@pytest.mark.parametrize('model,stem,width,size', IMG)
@pytest.mark.parametrize('layout', ['moco', 'supcontrast', 'supcontrast_dp', 'eztorch', 'eztorch_lightning',
                                    'torchvision'])
def test_image_layouts(layout, model, stem, width, size):
    trunk = randomised(build_trunk(model, stem=stem, width=width))
    sd = trunk.state_dict()
    head = {'fc.weight': torch.randn(10, trunk.feat_dim), 'fc.bias': torch.zeros(10)}
    obj = {
        'moco': lambda: {'state_dict': {**{f'module.encoder_q.{k}': v for k, v in {**sd, **head}.items()},
                                        **{f'module.encoder_k.{k}': v * 0 for k, v in sd.items()},
                                        'module.queue': torch.randn(4, 8)}, 'arch': model, 'epoch': 200},
        'supcontrast': lambda: {'model': {**supcontrast_names(sd, 'encoder.'), 'head.0.weight': torch.randn(4, 4)},
                                'opt': {}, 'epoch': 1000},
        'supcontrast_dp': lambda: {'model': supcontrast_names(sd, 'encoder.module.'), 'opt': {}, 'epoch': 1},
        'eztorch': lambda: dict(sd),
        'eztorch_lightning': lambda: {'state_dict': {**{f'trunk.{k}': v for k, v in sd.items()},
                                                     **{f'momentum_trunk.{k}': v * 0 for k, v in sd.items()},
                                                     'projector.0.weight': torch.randn(4, 4)}, 'epoch': 3},
        'torchvision': lambda: {**sd, **head},
    }[layout]()
    ckpt = checkpoint_layouts.convert(obj)
    assert ckpt['layout'] == layout.removesuffix('_dp')
    assert ckpt['args'] == {'model': model, 'stem': stem, 'width': width, 'size': 224 if stem == 'imagenet' else 32,
                            'run_name': f'{ckpt["layout"]}_{model}'}
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert torch.equal(features(ckpt, x), trunk(x))


@pytest.mark.parametrize('model,width', [('r3d18', 4), ('r3d50', 4)])
@pytest.mark.parametrize('lightning', [False, True])
def test_pytorchvideo_layouts(model, width, lightning):
    trunk = randomised(build_trunk(model, width=width))
    pv = {checkpoint_layouts.to_pytorchvideo(k): v for k, v in trunk.state_dict().items()}
    assert 'blocks.0.conv.weight' in pv and 'blocks.1.res_blocks.0.branch2.conv_a.weight' in pv
    assert 'blocks.2.res_blocks.0.branch1_conv.weight' in pv
    pv['blocks.5.proj.weight'] = torch.randn(400, trunk.feat_dim)
    obj = {'state_dict': {f'trunk.{k}': v for k, v in pv.items()}} if lightning else pv
    ckpt = checkpoint_layouts.convert(obj)
    assert ckpt['layout'] == ('eztorch_lightning' if lightning else 'pytorchvideo')
    assert ckpt['args']['model'] == model and ckpt['args']['width'] == width and ckpt['args']['num_frames'] == 8
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        assert torch.equal(features(ckpt, x), trunk(x))


@pytest.mark.parametrize('obj', [{'weights': {'a.b': torch.zeros(1)}, 'step': 3},
                                 {'state_dict': {'backbone.conv.weight': torch.zeros(1)}}, [1, 2]])
def test_unknown_layout_names_keys(obj):
    with pytest.raises(UserError, match='layout not recognised') as e:
        checkpoint_layouts.convert(obj)
    if isinstance(obj, dict):
        assert list(obj)[0] in str(e.value)


def test_export_pytorchvideo_round_trip_and_detectron2_refusal(tmp_path):
    trunk = randomised(build_trunk('r3d18', width=4))
    ours = {'method': 'SCE', 'epoch': 1, 'model': {f'encoder.{k}': v for k, v in trunk.state_dict().items()},
            'args': {'model': 'r3d18', 'stem': 'imagenet', 'width': 4, 'num_frames': 8, 'run_name': 'x'}}
    torch.save(ours, tmp_path / 'ours.pth')
    proc = run_script('scripts/export_trunk.py', '--ckpt', tmp_path / 'ours.pth', '--format', 'pytorchvideo',
                      '--out', tmp_path / 'pv.pth', cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    pv = torch.load(tmp_path / 'pv.pth', weights_only=True)
    assert all(k.startswith('blocks.') for k in pv)
    back = checkpoint_layouts.convert(pv)
    assert back['model'].keys() == ours['model'].keys()
    assert all(torch.equal(back['model'][k], v) for k, v in ours['model'].items())
    proc = run_script('scripts/export_trunk.py', '--ckpt', tmp_path / 'ours.pth', '--format', 'detectron2',
                      '--out', tmp_path / 'd2.pkl', cwd=tmp_path)
    assert_user_error(proc, tmp_path, 'detectron2 takes 2-D ResNets only')
