#!/usr/bin/env python3
"""Export the trunk of any checkpoint of this project for use elsewhere.

    python scripts/export_trunk.py --ckpt CKPT --format torchvision --out resnet50.pth
    python scripts/export_trunk.py --ckpt CKPT --format detectron2 --out resnet50.pkl
    python scripts/export_trunk.py --ckpt CKPT --format pytorchvideo --out r3d50.pth

torchvision: a state_dict that torchvision.models.resnet18/34/50/101(num_classes=N) loads with
strict=True. The classifier `fc` is the checkpoint's own linear layer when it has one (main_linear,
main_ce); otherwise a zero 1000-class layer (logits 0), to be replaced before fine-tuning.

detectron2: the pickled dict MoCo's convert-pretrain-to-detectron2.py writes, which the CLSA, MoCo
and SCE detection transfers load with MODEL.WEIGHTS: {'model': {name: numpy array}, '__author__',
'matching_heuristics': True}, with detectron2's names (stem.conv1, res2..res5, conv1..conv3 and
their '.norm', shortcut).

pytorchvideo: an R3D-18/50 trunk's state_dict under PyTorchVideo's names (blocks.0 stem, blocks.1-4
res_blocks with branch1_conv/norm and branch2.conv_a..c/norm_a..c), as SlowFast/PyTorchVideo and
eztorch load it; the inverse of checkpoint_layouts' mapping, so it loads back identically.

Any checkpoint --ckpt takes may be one of the published layouts (checkpoint_layouts.py).
Only ImageNet-stem trunks (7x7/2 conv + max-pool) have these architectures: a CIFAR-stem trunk
(3x3 conv, no max-pool) is refused. torchvision also needs --width 64; detectron2 represents other
widths of ResNet-50/101 with the config keys printed.
"""
import argparse
import os
import pickle
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import checkpoint_layouts  # noqa: E402
import checkpoints  # noqa: E402
import options  # noqa: E402
import util  # noqa: E402
from networks.resnet_big import build_trunk  # noqa: E402


def parse_option():
    parser = argparse.ArgumentParser(description='export the trunk of a checkpoint to torchvision, detectron2 '
                                                 'or PyTorchVideo')
    parser.add_argument('--ckpt', required=True, help='checkpoint of this project or a published one')
    parser.add_argument('--format', required=True, choices=['torchvision', 'detectron2', 'pytorchvideo'])
    parser.add_argument('--out', required=True, help='file to write (.pth for torchvision and pytorchvideo, '
                                                     '.pkl for detectron2)')
    return parser.parse_args()


def trunk_of(ckpt, fmt):
    """The trunk's state_dict and its options, refusing what the format cannot represent."""
    a = ckpt['args']
    video = a['model'].startswith('r3d')
    if fmt == 'pytorchvideo':
        if not video:
            raise util.UserError(f'the trunk is a 2-D {a["model"]}; pytorchvideo takes the video trunks r3d18/r3d50 '
                                 f'only: use --format torchvision or detectron2')
        return checkpoints.trunk_state_dict(ckpt), a
    if video:
        raise util.UserError(f'the trunk is the video {a["model"]}; {fmt} takes 2-D ResNets only: '
                             f'use --format pytorchvideo')
    if a['stem'] != 'imagenet':
        raise util.UserError(f'the trunk has the {a["stem"]} stem (3x3 conv, no max-pool); {fmt} ResNets have '
                             f'the ImageNet stem (7x7/2 conv + max-pool): only --stem imagenet trunks can be exported')
    if a['width'] != 64 and (fmt == 'torchvision' or a['model'] in ('resnet18', 'resnet34')):
        raise util.UserError(f'the trunk has --width {a["width"]}; {fmt} {a["model"]} has 64 channels in its first '
                             f'stage: only --width 64 trunks can be exported to it')
    return checkpoints.trunk_state_dict(ckpt), a


def classifier_of(ckpt):
    """The checkpoint's own linear classifier (main_linear's probe or main_ce's fc), or None."""
    model = ckpt['model']
    for prefix in ('classifier.fc.', 'fc.'):
        if f'{prefix}weight' in model and model[f'{prefix}weight'].dim() == 2:
            return model[f'{prefix}weight'], model[f'{prefix}bias']
    return None


def to_torchvision(ckpt):
    import torchvision
    state, a = trunk_of(ckpt, 'torchvision')
    feat_dim = build_trunk(a['model'], stem=a['stem'], width=a['width']).feat_dim
    fc = classifier_of(ckpt)
    if fc is None:
        fc = torch.zeros(1000, feat_dim), torch.zeros(1000)
        print('note: the checkpoint has no classifier: fc is a zero 1000-class layer; replace it before fine-tuning')
    else:
        print(f'note: fc is the checkpoint\'s {len(fc[0])}-class classifier: '
              f'torchvision.models.{a["model"]}(num_classes={len(fc[0])})')
    state = {**state, 'fc.weight': fc[0], 'fc.bias': fc[1]}
    # the guarantee this export gives, checked before anything is written
    getattr(torchvision.models, a['model'])(num_classes=len(fc[0])).load_state_dict(state, strict=True)
    return state


def detectron2_name(key):
    """Our (torchvision) name -> detectron2's, as MoCo's converter maps them."""
    if not key.startswith('layer'):
        key = 'stem.' + key  # conv1, bn1
    for i in range(1, 5):
        key = key.replace(f'layer{i}.', f'res{i + 1}.')
    for i in range(1, 4):
        key = key.replace(f'bn{i}.', f'conv{i}.norm.')
    return key.replace('downsample.0.', 'shortcut.').replace('downsample.1.', 'shortcut.norm.')


def to_detectron2(ckpt):
    state, a = trunk_of(ckpt, 'detectron2')
    # detectron2's (frozen) BatchNorm keeps no batch counter
    model = {detectron2_name(k): v.contiguous().numpy() for k, v in state.items()
             if not k.endswith('num_batches_tracked')}
    depth = int(a['model'].removeprefix('resnet'))
    if a['width'] != 64:
        expansion = 4 if depth >= 50 else 1
        print(f'note: set MODEL.RESNETS.DEPTH {depth} MODEL.RESNETS.STEM_OUT_CHANNELS {a["width"]} '
              f'MODEL.RESNETS.RES2_OUT_CHANNELS {a["width"] * expansion} MODEL.RESNETS.WIDTH_PER_GROUP {a["width"]}')
    return {'model': model, '__author__': f'{ckpt["method"]} ({a.get("run_name")}, epoch {ckpt["epoch"]})',
            'matching_heuristics': True}


def to_pytorchvideo(ckpt):
    state, _ = trunk_of(ckpt, 'pytorchvideo')
    return {checkpoint_layouts.to_pytorchvideo(k): v for k, v in state.items()}


def main():
    args = parse_option()
    options.check_output_file(args.out, '--out')
    ckpt = checkpoints.load_checkpoint(args.ckpt)
    exported = {'torchvision': to_torchvision, 'detectron2': to_detectron2,
                'pytorchvideo': to_pytorchvideo}[args.format](ckpt)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = f'{args.out}.tmp{os.getpid()}'
    try:
        with open(tmp, 'wb') as f:
            (pickle.dump if args.format == 'detectron2' else torch.save)(exported, f)
        os.replace(tmp, args.out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    n = len(exported['model']) if args.format == 'detectron2' else len(exported)
    print(f'{args.format}: {n} tensors of the {ckpt["args"]["model"]} trunk written to {args.out}')


if __name__ == '__main__':
    util.run(main)
