"""Supervised cross-entropy training: SupContrast's baseline, or fine-tuning a pretrained trunk.

    python main_ce.py --batch_size 1024 --learning_rate 0.8 --cosine --syncBN
    python main_ce.py --pretrained save/SupCon/cifar10_models/RUN/last.pth --learning_rate 0.05

Videos (--dataset ucf101 or hmdb51 with --split_id, or video, kinetics) default to the released
fine-tuning (VIDEO_FINETUNING) and train fast, then test: training validates every --val_freq
epochs on one clip and one crop per video and keeps best.pth; the same command with --test best
(or last) then tests that checkpoint on --test_clips x --test_crops views per video, averaging the
softmax, and trains nothing:

    python main_ce.py --pretrained save/SCE/r3d50_kinetics400/last.pth --dataset ucf101 --data_folder DIR
    python main_ce.py --pretrained save/SCE/r3d50_kinetics400/last.pth --dataset ucf101 --data_folder DIR \\
        --test best --batch_size_val 60
"""
import augment
import checkpoints
import classifier
import datasets
import distributed
import options
import util
import video_augment
import video_options
from networks.resnet_big import SupCEResNet
from video_datasets import VIDEO_DATASETS

# The released fine-tuning of R3D trunks on UCF101 / HMDB51: SGD lr 0.1 per 256 clips, scaled with
# the batch (0.025 at batch 64), no weight decay, a per-step cosine to 0 without warm-up, 200 epochs,
# dropout 0.8 before the classifier (its head initialised as PyTorchVideo's: N(0, 0.01), bias 0),
# 224-px clips with colour jitter, validation every 5 epochs.
VIDEO_FINETUNING = dict(batch_size=64, learning_rate=None, lr_per_256=0.1, weight_decay=0.0, epochs=200,
                        lr_decay_epochs='', warmup_epochs=0, dropout=0.8, size=224, val_freq=5)


def video_lr(args):
    """--lr_per_256 scaled to the batch, rounded so that the run name shows 0.00234375, not float noise."""
    return round(args.lr_per_256 * args.batch_size / 256, 12)


def parse_option():
    parser = options.parser('cross-entropy training / fine-tuning')
    options.add_common_options(parser, batch_size=256, learning_rate=0.2, lr_decay_epochs='350,400,450',
                               lr_decay_rate=0.1, weight_decay=1e-4, epochs=500)
    parser.add_argument('--pretrained', type=str, default=None, metavar='CKPT',
                        help='start from the trunk of one of our checkpoints (its model, stem, width)')
    parser.add_argument('--dropout', type=float, default=0.0, help='dropout before the classifier')
    options.add_classifier_options(parser)
    options.add_knn_options(parser, default_freq=0)  # the trunk's kNN accuracy, as the pretraining scripts log it
    video_options.add_video_options(parser, num_frames=None)
    # add_common_options declares --learning_rate; its help says how videos default it
    next(a for a in parser._actions if a.dest == 'learning_rate').help = (
        f'learning rate; videos: {VIDEO_FINETUNING["lr_per_256"]} per 256 clips x --batch_size / 256 unless given '
        f'(0.025 at batch 64)')
    args, given = options.parse(parser, lambda known: VIDEO_FINETUNING if known.dataset in VIDEO_DATASETS else {})
    if args.learning_rate is None:  # the video fine-tuning scales the rate with the batch
        args.learning_rate = video_lr(args)
    options.check_classifier_options(args, given)
    if args.warmup_epochs is None:
        options.check_schedule(args, given)

    if args.pretrained:
        args.pretrained_ckpt = checkpoints.load_checkpoint(args.pretrained, '--pretrained')
        checkpoints.take_trunk_options(args, args.pretrained_ckpt, f'--pretrained {args.pretrained}', given)
    video_options.frames_of_checkpoint(args, args.pretrained_ckpt['args'] if args.pretrained else {})
    if args.warmup_epochs is None:
        args.warm |= args.batch_size > 256  # large batches warm up, as SupContrast does
    options.finish_options(args, given)
    video_options.check_model_fits_data(args)
    name = (f'SupCE_{args.dataset}_{args.model}_lr_{args.learning_rate}_decay_{args.weight_decay}'
            f'_bsz_{args.batch_size}_trial_{args.trial}')
    if args.pretrained:
        name += '_pretrained'
    if args.dataset in ('ucf101', 'hmdb51'):
        name += f'_split_{args.split_id}'
    if args.dataset in VIDEO_DATASETS:
        name += f'_frames_{args.num_frames}'
    options.name_run(args, name, 'SupCon')
    return args


def set_loader(args):
    """(training, validation) loaders: crops, flips (and clips' colour jitter, as SCE's fine-tuning)."""
    def train_views(mean, std):
        if args.dataset in VIDEO_DATASETS:
            return video_augment.ClipScaleCropFlip(args.size, mean, std, colour=True)
        return augment.crop_flip_transform(args.size, mean, std)
    return classifier.loaders(args, train_views)


def set_model(args):
    model = SupCEResNet(args.model, num_classes=args.n_classes, stem=args.stem, width=args.width,
                        dropout=args.dropout)
    if args.pretrained:
        trunk = checkpoints.trunk_state_dict(args.pretrained_ckpt)
        checkpoints.load_state(model.encoder, trunk, f'--pretrained {args.pretrained}')
        del args.pretrained_ckpt  # not an option: keep it out of the saved args
    if args.dataset in VIDEO_DATASETS:  # the released fine-tuning's head: PyTorchVideo's init
        classifier.init_normal(model.fc)
    return distributed.distribute(model, args)


def main():
    args = parse_option()
    ckpt = distributed.start(args)
    if util.is_main() and args.dataset in VIDEO_DATASETS:
        scaled = args.learning_rate == video_lr(args)
        print(f'video fine-tuning: lr {args.learning_rate:g}'
              + (f' (= {args.lr_per_256:g} per 256 clips x batch {args.batch_size} / 256)' if scaled else '')
              + f', epochs {args.epochs}', flush=True)
    train_loader, val_loader = set_loader(args)
    model = set_model(args)
    classifier.fit(model, model, 'SupCE', train_loader, val_loader, ckpt, args,
                   knn_loaders=None if args.test else datasets.knn_loaders(args))


if __name__ == '__main__':
    util.run(main)
