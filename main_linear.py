"""Linear evaluation: a linear classifier trained on the frozen trunk of any of our checkpoints.

    python main_linear.py --batch_size 512 --learning_rate 5 --ckpt /path/to/model.pth

The trunk (model, stem, width) is rebuilt from the checkpoint; the crop size (and a video trunk's
--num_frames) defaults to the one it was trained with.

Videos (--dataset video, kinetics, ucf101, hmdb51; --protocol video by default) train fast, then
test: training validates every --val_freq epochs on one clip and one crop per video and keeps
best.pth; the same command with --test best (or last) then tests that checkpoint on --test_clips x
--test_crops views per video, averaging the softmax, and trains nothing:

    python main_linear.py --ckpt save/SCE/r3d18_kinetics200/last.pth --dataset kinetics --data_folder DIR
    python main_linear.py --ckpt save/SCE/r3d18_kinetics200/last.pth --dataset kinetics --data_folder DIR \\
        --test best --batch_size_val 480
"""
from collections import OrderedDict

import torch
import torch.nn as nn

import augment
import checkpoints
import classifier
import distributed
import options
import util
import video_augment
from networks.resnet_big import LinearClassifier
from video_datasets import VIDEO_DATASETS


# Each method's published linear protocol: the defaults of the options below. Flags given on the
# command line override them.
PROTOCOLS = {
    'supcon': dict(learning_rate=0.1, lr_decay_epochs='60,75,90', lr_decay_rate=0.2, weight_decay=0.0,
                   epochs=100, fc_init='default', crop_min_scale=0.2),
    # MoCo's lincls: lr 30, x0.1 at 60 and 80, no weight decay, fc ~ N(0, 0.01), torchvision's crop
    'moco': dict(learning_rate=30.0, lr_decay_epochs='60,80', lr_decay_rate=0.1, weight_decay=0.0,
                 epochs=100, fc_init='normal', crop_min_scale=0.08),
    # CLSA's: lr 10, per-epoch cosine down to 0.01 (= lr * rate^3), no weight decay, fc ~ N(0, 0.01)
    'clsa': dict(learning_rate=10.0, lr_decay_epochs='', lr_decay_rate=0.1, weight_decay=0.0, epochs=100,
                 cosine=True, fc_init='normal', crop_min_scale=0.08),
    # SCE's (MoCo v3's): lr 0.1 per 256 images, per-epoch cosine to 0, no weight decay, 90 epochs
    'sce': dict(learning_rate=None, lr_per_256=0.1, lr_decay_epochs='', lr_decay_rate=0.0, weight_decay=0.0,
                epochs=90, cosine=True, fc_init='normal', crop_min_scale=0.08),
    # SCE's video protocol (the released linear configs of R3D-18 / R3D-50): lr 2.0 per 256 clips
    # (4.0 at batch 512), 8 warm-up epochs then a per-step cosine to 0, no weight decay, 60 epochs,
    # validation every 5; clips scaled, cropped and flipped (video_augment.ClipScaleCropFlip)
    'video': dict(learning_rate=None, lr_per_256=2.0, batch_size=512, lr_decay_epochs='', lr_decay_rate=0.0,
                  weight_decay=0.0, epochs=60, warmup_epochs=8, val_freq=5, fc_init='default', crop_min_scale=None),
}


def parse_option():
    parser = options.parser('linear evaluation of a frozen trunk')
    options.add_common_options(parser, batch_size=256, **{k: v for k, v in PROTOCOLS['supcon'].items()
                                                           if k not in ('fc_init', 'crop_min_scale')})
    parser.add_argument('--ckpt', type=str, required=True, help='checkpoint whose trunk is evaluated')
    parser.add_argument('--protocol', choices=sorted(PROTOCOLS), default=None,
                        help='defaults of a published linear protocol: supcon (SupContrast; the default for '
                             'images), moco (MoCo v1/v2), sce (SCE / MoCo v3), clsa (CLSA), video (SCE\'s video '
                             'protocol; the default for videos)')
    parser.add_argument('--fc_init', choices=['default', 'normal'], help="'normal': weights N(0, 0.01), bias 0")
    parser.add_argument('--crop_min_scale', type=float, help='smallest area of the training crop')
    options.add_classifier_options(parser)
    options.add_video_options(parser, num_frames=None)
    parser.set_defaults(size=None)  # the checkpoint's
    args, given = options.parse(parser, lambda known: dict(
        protocol=(protocol := known.protocol or ('video' if known.dataset in VIDEO_DATASETS else 'supcon')),
        **PROTOCOLS[protocol]))
    if (args.protocol == 'video') != (args.dataset in VIDEO_DATASETS):
        raise util.UserError(f'--protocol {args.protocol} does not evaluate --dataset {args.dataset}: '
                             f'--protocol video is the protocol of video datasets ({", ".join(VIDEO_DATASETS)})')
    if args.protocol == 'video':
        options.refuse(given, ('crop_min_scale',), 'the video protocol scales and crops clips as released; drop it')
    options.refuse(given, ('syncBN',), 'the trunk is frozen and the linear classifier has no BatchNorm')
    options.check_classifier_options(args, given)
    if args.warmup_epochs is None:
        options.check_schedule(args, given)
    if args.learning_rate is None:  # a protocol that scales the rate with the batch
        args.learning_rate = args.lr_per_256 * args.batch_size / 256

    args.pretrained = checkpoints.load_checkpoint(args.ckpt)
    checkpoints.take_trunk_options(args, args.pretrained, f'--ckpt {args.ckpt}', given)
    options.check_model_fits_data(args)
    options.frames_of_checkpoint(args, args.pretrained['args'])
    if args.size is None:
        args.size = args.pretrained['args']['size']
    options.finish_options(args, given)
    name = (f'{args.pretrained["args"]["run_name"]}_epoch_{args.pretrained["epoch"]}_linear_{args.dataset}'
            f'_lr_{args.learning_rate}_bsz_{args.batch_size}_trial_{args.trial}')
    if args.protocol != 'supcon':
        name += f'_{args.protocol}'
    if args.protocol == 'video':
        name += f'_frames_{args.num_frames}'

    options.name_run(args, name, 'Linear', name_width=False)  # the trunk's run name has the width
    return args


def set_loader(args):
    """(training, validation) loaders: scaled crops and flips (--crop_min_scale for images)."""
    def train_views(mean, std):
        if args.dataset in VIDEO_DATASETS:
            return video_augment.ClipScaleCropFlip(args.size, mean, std)
        return augment.crop_flip_transform(args.size, mean, std, args.crop_min_scale)
    return classifier.loaders(args, train_views)


def set_model(args):
    """Returns (probe, model): the probe (trunk under 'encoder.', classifier under 'classifier.') is
    what is saved; the model trains the classifier alone (DDP-wrapped if distributed) on the frozen
    trunk's features."""
    trunk = checkpoints.pretrained_trunk(args.pretrained, f'--ckpt {args.ckpt}')
    del args.pretrained  # not an option: keep it out of the saved args
    linear = LinearClassifier(trunk.feat_dim, num_classes=args.n_classes)
    if args.fc_init == 'normal':
        nn.init.normal_(linear.fc.weight, std=0.01)
        nn.init.zeros_(linear.fc.bias)
    probe = nn.Sequential(OrderedDict(encoder=trunk, classifier=linear))
    trunk.to(args.device)
    if args.channels_last:
        distributed.channels_last(trunk)
    frozen = classifier.FrozenTrunk(torch.compile(trunk) if args.compile else trunk)
    return probe, nn.Sequential(frozen, distributed.distribute(linear, args))


def main():
    args = parse_option()
    ckpt = distributed.start(args)
    train_loader, val_loader = set_loader(args)
    probe, model = set_model(args)
    classifier.fit(model, probe, 'Linear', train_loader, val_loader, ckpt, args)


if __name__ == '__main__':
    util.run(main)
