"""Published checkpoints (MoCo/Revisiting/CLSA, SupContrast, eztorch, PyTorchVideo, torchvision) read
into the shape of ours, so every evaluation script loads them unchanged.

convert(obj) takes what torch.load(path, weights_only=True) returned for a file that is not one of
our checkpoints and returns {'method': 'published', 'layout', 'epoch': 0, 'args', 'model'} with the
trunk under 'encoder.' in our (torchvision) names. The layout is recognised from the keys; depth,
stem and width are read from the weight shapes; classifier and projection heads are dropped.
"""
import re

import torch

from util import UserError

# PyTorchVideo's ResBlock: branch2.conv_a/norm_a/conv_b/norm_b(/conv_c/norm_c) are our
# conv1/bn1/conv2/bn2(/conv3/bn3); the projection shortcut is branch1_conv / branch1_norm.
_PV_BRANCH = {'conv1': 'branch2.conv_a', 'bn1': 'branch2.norm_a', 'conv2': 'branch2.conv_b',
              'bn2': 'branch2.norm_b', 'conv3': 'branch2.conv_c', 'bn3': 'branch2.norm_c',
              'downsample.0': 'branch1_conv', 'downsample.1': 'branch1_norm'}
_PV_BRANCH_INV = {v: k for k, v in _PV_BRANCH.items()}
_STEM = {'conv1': 'blocks.0.conv', 'bn1': 'blocks.0.norm'}
_STEM_INV = {v: k for k, v in _STEM.items()}


def _rename(name, stem, branch, block, new_block):
    """`name` with its stem or block module renamed by the tables (block: a regex of stage, block
    index and branch module; new_block: their format); None when neither applies."""
    head, _, leaf = name.rpartition('.')
    if head in stem:
        return f'{stem[head]}.{leaf}'
    m = re.fullmatch(block, head)
    if not m or m.group(3) not in branch:
        return None
    return new_block.format(m.group(1), m.group(2), branch[m.group(3)]) + f'.{leaf}'


def to_pytorchvideo(name):
    """Our R3D parameter name -> PyTorchVideo's (blocks.0 the stem, blocks.1-4 the stages)."""
    renamed = _rename(name, _STEM, _PV_BRANCH, r'layer(\d)\.(\d+)\.(.+)', 'blocks.{}.res_blocks.{}.{}')
    if renamed is None:
        raise KeyError(name)
    return renamed


def from_pytorchvideo(name):
    """PyTorchVideo's name -> ours; None for what is not trunk (the head, blocks.5)."""
    return _rename(name, _STEM_INV, _PV_BRANCH_INV, r'blocks\.(\d)\.res_blocks\.(\d+)\.(.+)', 'layer{}.{}.{}')


def _strip(state, prefix):
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _trunk_only(state):
    """Keep the torchvision-named trunk: conv1/bn1/layerN; drop fc, heads, queues."""
    return {k: v for k, v in state.items() if re.match(r'(conv1|bn1|layer\d)\.', k) and torch.is_tensor(v)}


def _supcontrast(state):
    """SupContrast's resnet_big.py names are torchvision's except the projection shortcut."""
    return {k.replace('.shortcut.0.', '.downsample.0.').replace('.shortcut.1.', '.downsample.1.'): v
            for k, v in state.items()}


def _arch(state):
    """(model, stem, width) from the weight shapes of a torchvision-named trunk."""
    w = state['conv1.weight']
    blocks = [len({k.split('.')[1] for k in state if k.startswith(f'layer{i}.')}) for i in range(1, 5)]
    bottleneck = 'layer1.0.conv3.weight' in state
    if w.dim() == 5:
        model = 'r3d50' if bottleneck else 'r3d18'
        return model, 'imagenet', w.shape[0]
    names = {(False, (2, 2, 2, 2)): 'resnet18', (False, (3, 4, 6, 3)): 'resnet34',
             (True, (3, 4, 6, 3)): 'resnet50', (True, (3, 4, 23, 3)): 'resnet101'}
    model = names.get((bottleneck, tuple(blocks)))
    if model is None:
        raise UserError(f'the checkpoint\'s ResNet has {blocks} blocks per stage '
                        f'({"bottleneck" if bottleneck else "basic"}): not a ResNet-18/34/50/101')
    return model, 'imagenet' if w.shape[-1] == 7 else 'cifar', w.shape[0]


def _tensors(d):
    return isinstance(d, dict) and d and all(torch.is_tensor(v) for v in d.values())


def _recognise(obj):
    """(layout, torchvision-named trunk state) or (None, None)."""
    if not isinstance(obj, dict):
        return None, None
    sd = obj.get('state_dict')
    if isinstance(sd, dict):
        if any(k.startswith('module.encoder_q.') for k in sd):
            return 'moco', _strip(sd, 'module.encoder_q.')
        if any(k.startswith('encoder_q.') for k in sd):
            return 'moco', _strip(sd, 'encoder_q.')
        if any(k.startswith('trunk.') for k in sd):  # Lightning: the online trunk, not momentum_trunk
            inner = _strip(sd, 'trunk.')
            return ('eztorch_lightning', _from_pv(inner) if 'blocks.0.conv.weight' in inner else inner)
    model = obj.get('model')
    if isinstance(model, dict) and any(k.startswith('encoder.') for k in model):
        state = _strip(model, 'encoder.')
        state = _strip(state, 'module.') if any(k.startswith('module.') for k in state) else state
        return 'supcontrast', _supcontrast(state)
    if _tensors(obj):
        if 'blocks.0.conv.weight' in obj:
            return 'pytorchvideo', _from_pv(obj)
        if 'conv1.weight' in obj:
            return ('torchvision' if 'fc.weight' in obj else 'eztorch'), obj
    return None, None


def _from_pv(state):
    out = {}
    for k, v in state.items():
        name = from_pytorchvideo(k)
        if name is not None:
            out[name] = v
    return out


def convert(obj):
    """A published checkpoint -> a dict shaped like ours (see the module docstring)."""
    layout, state = _recognise(obj)
    state = _trunk_only(state or {})
    if layout is None or 'conv1.weight' not in state:
        keys = list(obj)[:4] if isinstance(obj, dict) else [type(obj).__name__]
        inner = next((obj[k] for k in ('state_dict', 'model') if isinstance(obj, dict) and isinstance(obj.get(k), dict)), None)
        if inner:
            keys += [f'…{k}' for k in list(inner)[:3]]
        raise UserError(f'checkpoint layout not recognised (keys {", ".join(map(str, keys))}): expected one of '
                        f'ours, MoCo/Revisiting/CLSA, SupContrast, eztorch, PyTorchVideo or a torchvision ResNet')
    model, stem, width = _arch(state)
    video = model.startswith('r3d')
    args = {'model': model, 'stem': stem, 'width': int(width), 'size': 224 if stem == 'imagenet' else 32,
            'run_name': f'{layout}_{model}'}
    if video:
        args['num_frames'] = 8
    return {'method': 'published', 'layout': layout, 'epoch': 0, 'args': args,
            'model': {f'encoder.{k}': v for k, v in state.items()}}
