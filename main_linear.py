"""Linear evaluation: a linear classifier trained on the frozen trunk of any of our checkpoints.

    python main_linear.py --batch_size 512 --learning_rate 5 --ckpt /path/to/model.pth

The trunk (model, stem, width) is rebuilt from the checkpoint; the crop size (and a video trunk's
--num_frames) defaults to the one it was trained with. Unless --protocol says otherwise, the run
applies the linear protocol of the method that wrote the checkpoint (PROTOCOLS, printed at the
start). MoCo's and CLSA's lincls commands run as written (--pretrained, --data or a positional
ImageNet folder with train/ and val/, their launcher flags):

    python main_linear.py -a resnet50 --lr 30.0 --batch-size 256 --pretrained CKPT \\
        --dist-url 'tcp://localhost:10001' --multiprocessing-distributed --world-size 1 --rank 0 DIR
    python main_linear.py --data=DIR --dist-url=tcp://localhost:10001 --pretrained=CKPT

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
import video_options
from networks.resnet3d import VIDEO_MODEL_NAMES
from networks.resnet_big import LinearClassifier
from video_datasets import VIDEO_DATASETS


# Each method's published linear protocol: the defaults of the options below. Flags given on the
# command line override them.
PROTOCOLS = {
    'supcon': dict(learning_rate=0.1, lr_decay_epochs='60,75,90', lr_decay_rate=0.2, weight_decay=0.0,
                   epochs=100, fc_init='default', crop_min_scale=0.2),
    # MoCo's main_lincls: lr 30, x0.1 at 60 and 80, no weight decay, fc ~ N(0, 0.01), torchvision's
    # crop; ImageNet (its DIR/train, DIR/val)
    'moco': dict(learning_rate=30.0, lr_decay_epochs='60,80', lr_decay_rate=0.1, weight_decay=0.0,
                 epochs=100, fc_init='normal', crop_min_scale=0.08, dataset='imagenet'),
    # CLSA's lincls: lr 10, per-epoch cosine from lr (the first epoch) towards 0.01 (its final_lr),
    # no weight decay, fc ~ N(0, 0.01); ImageNet
    'clsa': dict(learning_rate=10.0, final_lr=0.01, lr_decay_epochs='', weight_decay=0.0, epochs=100,
                 cosine=True, fc_init='normal', crop_min_scale=0.08, dataset='imagenet'),
    # SCE's (MoCo v3's, eztorch's config): lr 0.1 per 256 images, a per-step cosine to 0 without
    # warm-up, no weight decay, 90 epochs
    'sce': dict(learning_rate=None, lr_per_256=0.1, lr_decay_epochs='', weight_decay=0.0, epochs=90, warmup_epochs=0,
                fc_init='normal', crop_min_scale=0.08),
    # SCE's video protocol (the released linear configs of R3D-18 / R3D-50): lr 2.0 per 256 clips
    # (4.0 at batch 512), 8 warm-up epochs then a per-step cosine to 0, no weight decay, 60 epochs,
    # validation every 5, fc ~ N(0, 0.01) (PyTorchVideo's head); clips scaled, cropped and flipped
    # (video_augment.ClipScaleCropFlip)
    'video': dict(learning_rate=None, lr_per_256=2.0, batch_size=512, lr_decay_epochs='', weight_decay=0.0, epochs=60,
                  warmup_epochs=8, val_freq=5, fc_init='normal', crop_min_scale=None),
}

# Without --protocol: the protocol of the method that wrote the checkpoint ('method' of ours; a
# published one's by its layout), the video protocol for video trunks and datasets.
METHOD_PROTOCOLS = {'SupCon': 'supcon', 'SimCLR': 'supcon', 'SupCE': 'supcon', 'MoCo': 'moco', 'SCE': 'sce',
                    'CLSA': 'clsa'}
LAYOUT_PROTOCOLS = {'supcontrast': 'supcon', 'torchvision': 'supcon', 'moco': 'moco', 'eztorch': 'sce',
                    'eztorch_lightning': 'sce'}


def checkpoint_protocol(ckpt, dataset):
    """(protocol, why) of a checkpoint evaluated on `dataset`, when --protocol is not given."""
    if dataset in VIDEO_DATASETS or ckpt['args']['model'] in VIDEO_MODEL_NAMES:
        return 'video', 'a video trunk' if dataset not in VIDEO_DATASETS else f'the video dataset {dataset}'
    if ckpt['method'] == 'published':
        why = f'a published checkpoint in the {ckpt["layout"]} layout'
        if ckpt['layout'] == 'moco':  # CLSA's and Revisiting's checkpoints are MoCo's layout too
            why += " (MoCo's, Revisiting's and CLSA's: give --protocol clsa for CLSA's)"
        return LAYOUT_PROTOCOLS[ckpt['layout']], why
    if ckpt['method'] == 'Linear':  # a probe's trunk: the protocol the probe was trained with
        return ckpt['args']['protocol'], 'a linear probe trained with it'
    return METHOD_PROTOCOLS[ckpt['method']], f'a {ckpt["method"]} checkpoint'


def parse_option():
    parser = options.parser('linear evaluation of a frozen trunk')
    options.add_common_options(parser, batch_size=256, **{k: PROTOCOLS['supcon'][k] for k in (
        'learning_rate', 'lr_decay_epochs', 'lr_decay_rate', 'weight_decay', 'epochs')})
    options.add_launcher_options(parser)
    parser.add_argument('data', nargs='?', default=None,
                        help="dataset folder holding train/ and val/, as MoCo's main_lincls takes it (= --data_folder; "
                             '--dataset defaults to imagenet)')
    parser.add_argument('--ckpt', '--pretrained', type=str, required=True,
                        help="checkpoint whose trunk is evaluated, ours or a published one (--pretrained: MoCo's and "
                             "CLSA's spelling)")
    parser.add_argument('--protocol', choices=sorted(PROTOCOLS), default=None,
                        help='defaults of a published linear protocol: supcon (SupContrast), moco (MoCo v1/v2), sce '
                             "(SCE / MoCo v3), clsa (CLSA), video (SCE's video protocol) (default: the protocol of the "
                             'method that wrote --ckpt: supcon for SupCon, SimCLR and CE, moco for MoCo and the MoCo '
                             'layout, sce for SCE and eztorch, clsa for CLSA, video for video trunks and datasets)')
    parser.add_argument('--fc_init', choices=['default', 'normal'], help="'normal': weights N(0, 0.01), bias 0")
    parser.add_argument('--crop_min_scale', type=float, help='smallest area of the training crop')
    options.add_classifier_options(parser)
    video_options.add_video_options(parser, num_frames=None)
    parser.set_defaults(size=None)  # the checkpoint's
    found = {}

    def preset(known):
        """The protocol's defaults (the checkpoint is loaded here to pick it; --help needs none)."""
        protocol, why = known.protocol, 'given'
        if known.ckpt is not None:
            found['ckpt'] = checkpoints.load_checkpoint(known.ckpt)
            if protocol is None:
                protocol, why = checkpoint_protocol(found['ckpt'], known.dataset)
        elif protocol is None:
            protocol, why = ('video' if known.dataset in VIDEO_DATASETS else 'supcon'), 'the default'
        found['why'] = why
        defaults = dict(protocol=protocol, **PROTOCOLS[protocol])
        if known.data is not None:  # MoCo's positional folder is ImageNet's layout
            defaults['dataset'] = 'imagenet'
        return defaults
    args, given = options.parse(parser, preset)
    args.protocol_source = found['why']
    if 'protocol' in given and (args.protocol == 'video') != (args.dataset in VIDEO_DATASETS):
        raise util.UserError(f'--protocol {args.protocol} does not evaluate --dataset {args.dataset}: '
                             f'--protocol video is the protocol of video datasets ({", ".join(VIDEO_DATASETS)})')
    if args.data is not None:
        options.refuse(given, ('data_folder',), 'the positional data folder names it already; give one of them')
        args.data_folder = args.data
    if args.protocol == 'video':
        options.refuse(given, ('crop_min_scale',), 'the video protocol scales and crops clips as released; drop it')
    if args.protocol == 'clsa':
        options.refuse(given, ('lr_decay_rate', 'warm'),
                       "CLSA's schedule is a per-epoch cosine from lr to 0.01 without warm-up; drop it")
    options.refuse(given, ('syncBN',), 'the trunk is frozen and the linear classifier has no BatchNorm')
    options.check_launcher(args, given)
    options.check_classifier_options(args, given)
    if args.warmup_epochs is None:
        options.check_schedule(args, given)
    if args.learning_rate is None:  # a protocol that scales the rate with the batch
        args.learning_rate = args.lr_per_256 * args.batch_size / 256

    args.pretrained_ckpt = found['ckpt']
    checkpoints.take_trunk_options(args, args.pretrained_ckpt, f'--ckpt {args.ckpt}', given)
    video_options.check_model_fits_data(args)
    video_options.frames_of_checkpoint(args, args.pretrained_ckpt['args'])
    if args.size is None:
        args.size = args.pretrained_ckpt['args']['size']
    options.finish_options(args, given)
    name = (f'{args.pretrained_ckpt["args"]["run_name"]}_epoch_{args.pretrained_ckpt["epoch"]}_linear_{args.dataset}'
            f'_lr_{args.learning_rate}_bsz_{args.batch_size}_trial_{args.trial}')
    if args.protocol != 'supcon':
        name += f'_{args.protocol}'
    if args.protocol == 'video':
        name += f'_frames_{args.num_frames}'

    options.name_run(args, name, 'Linear', name_width=False)  # the trunk's run name has the width
    return args


def protocol_line(args):
    """What the run applies, printed before it starts."""
    lr = f'lr {args.learning_rate:g}'
    if 'lr_per_256' in vars(args) and args.learning_rate == args.lr_per_256 * args.batch_size / 256:
        lr += f' (= {args.lr_per_256:g} per 256 x batch {args.batch_size} / 256)'
    return (f'linear protocol {args.protocol} ({args.protocol_source}): {lr}, epochs {args.epochs}, weight decay '
            f'{args.weight_decay:g}, fc init {args.fc_init}, dataset {args.dataset}')


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
    trunk = checkpoints.pretrained_trunk(args.pretrained_ckpt, f'--ckpt {args.ckpt}')
    del args.pretrained_ckpt  # not an option: keep it out of the saved args
    linear = LinearClassifier(trunk.feat_dim, num_classes=args.n_classes)
    if args.fc_init == 'normal':
        classifier.init_normal(linear.fc)
    probe = nn.Sequential(OrderedDict(encoder=trunk, classifier=linear))
    trunk.to(args.device)
    if args.channels_last:
        distributed.channels_last(trunk)
    frozen = classifier.FrozenTrunk(torch.compile(trunk) if args.compile else trunk)
    return probe, nn.Sequential(frozen, distributed.distribute(linear, args))


def main():
    args = parse_option()
    ckpt = distributed.start(args)
    if util.is_main():
        print(protocol_line(args), flush=True)
    train_loader, val_loader = set_loader(args)
    probe, model = set_model(args)
    classifier.fit(model, probe, 'Linear', train_loader, val_loader, ckpt, args)


if __name__ == '__main__':
    util.run(main)
