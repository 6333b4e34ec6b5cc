"""Option groups every script shares, declared once (SupContrast's spellings, with the seeds' other
spellings as aliases), and the derived settings, run names and save folders."""
import argparse
import ast
import math
import os

from networks.resnet3d import VIDEO_MODEL_NAMES
from networks.resnet_big import MODEL_NAMES, default_stem
from util import UserError


def parse_floats(text, name):
    """'(0.4914, 0.4822, 0.4465)' or '0.49,0.48,0.45' -> tuple of floats."""
    try:
        value = ast.literal_eval(text if ',' in text else f'({text},)')
        return tuple(float(v) for v in (value if isinstance(value, (tuple, list)) else [value]))
    except (ValueError, SyntaxError, TypeError):
        raise UserError(f'{name} must be numbers such as "(0.485, 0.456, 0.406)", got {text!r}')


def add_common_options(parser, *, batch_size, learning_rate, lr_decay_epochs, lr_decay_rate,
                       weight_decay, epochs):
    """Options every script shares, with SupContrast's spellings; each script passes its defaults."""
    g = parser.add_argument_group('run')
    g.add_argument('--print_freq', '--print-freq', '-p', type=int, default=10, help='print every N steps')
    g.add_argument('--save_freq', type=int, default=50, help='keep ckpt_epoch_N.pth every N epochs')
    g.add_argument('--num_workers', '--workers', '-j', type=int, default=16, help='data-loading workers per process')
    g.add_argument('--trial', type=str, default='0', help='id appended to the run name')
    g.add_argument('--seed', type=int, default=None, help='seed every RNG (per process: seed + rank)')
    g.add_argument('--resume', nargs='?', const='auto', default=None, metavar='CKPT',
                   help='continue from CKPT, or from the run folder\'s last.pth when no path is given')
    g.add_argument('--save_root', type=str, default='./save', help='root of the save/ folders')
    g.add_argument('--amp', choices=['none', 'bf16', 'fp16'], default='none', help='mixed precision')
    g.add_argument('--syncBN', action='store_true', help='synchronise BatchNorm across processes')

    g = parser.add_argument_group('speed (scripts/benchmark.py measures each)')
    g.add_argument('--channels_last', action=argparse.BooleanOptionalAction, default=None,
                   help='channels-last images and weights (default on CUDA): faster convolutions on GPUs, '
                        'and on CPUs with oneDNN, where it rounds differently from NCHW, so opt in there')
    g.add_argument('--fused_optimizer', action=argparse.BooleanOptionalAction, default=True,
                   help="one fused kernel for the optimiser step (else torch's default: foreach on CUDA, a loop on CPU)")
    g.add_argument('--compile', action='store_true', help='torch.compile the model (the first steps compile)')
    g.add_argument('--gpu_aug', action='store_true',
                   help='augment whole batches on the device (cifar10/100, stl10, digits: held in memory)')
    g.add_argument('--max_steps', type=int, default=None, metavar='N',
                   help='timing run: stop after N steps, print the time per step (data wait, compute), '
                        'images/s and peak memory of the steps after the first 2; writes no checkpoint')

    g = parser.add_argument_group('optimisation')
    g.add_argument('--batch_size', '--batch-size', '-b', type=int, default=batch_size,
                   help='global batch size (all processes)')
    g.add_argument('--epochs', type=int, default=epochs)
    g.add_argument('--learning_rate', '--lr', type=float, default=learning_rate)
    g.add_argument('--lr_decay_epochs', type=str, default=lr_decay_epochs, help='step schedule milestones, e.g. 700,800,900')
    g.add_argument('--lr_decay_rate', type=float, default=lr_decay_rate)
    g.add_argument('--weight_decay', '--wd', type=float, default=weight_decay)
    g.add_argument('--momentum', type=float, default=0.9)
    g.add_argument('--cosine', '--cos', action='store_true', help='cosine schedule down to lr * rate^3')
    g.add_argument('--warm', action='store_true', help='linear warm-up from 0.01 over 10 epochs')

    add_data_options(parser)

    g = parser.add_argument_group('model')
    g.add_argument('--model', '--arch', '-a', type=str, default=None, choices=MODEL_NAMES + VIDEO_MODEL_NAMES,
                   help='default resnet50')
    g.add_argument('--stem', choices=['cifar', 'imagenet'], default=None,
                   help='cifar: 3x3 conv, no max-pool; imagenet: 7x7/2 conv + max-pool (default: cifar up to 64 px)')
    g.add_argument('--width', type=int, default=None, help='channels of the first ResNet stage (default 64)')


def add_data_options(parser):
    """The data options, also used alone by the evaluation scripts that train nothing."""
    g = parser.add_argument_group('data')
    g.add_argument('--dataset', type=str, default='cifar10',
                   choices=['cifar10', 'cifar100', 'stl10', 'path', 'imagenet', 'digits',
                            'video', 'kinetics', 'ucf101', 'hmdb51'])
    g.add_argument('--data_folder', '--data', type=str, default=None, help='dataset root (default ./datasets/)')
    g.add_argument('--test_folder', type=str, default=None, help='evaluation split of --dataset path')
    g.add_argument('--mean', type=str, default=None, help='per-channel mean, e.g. "(0.4914, 0.4822, 0.4465)"')
    g.add_argument('--std', type=str, default=None, help='per-channel std, with --mean')
    g.add_argument('--size', type=int, default=None, help='crop size in pixels (default 32)')
    g.add_argument('--download', action=argparse.BooleanOptionalAction, default=True,
                   help='download cifar10/cifar100/stl10 when missing')


def add_launcher_options(parser):
    """The launcher options of the MoCo and CLSA code, mapped onto ours."""
    g = parser.add_argument_group('launcher (MoCo / CLSA spellings)')
    g.add_argument('--multiprocessing_distributed', '--multiprocessing-distributed', action='store_true',
                   help='one process per visible GPU on this node: relaunches through torchrun')
    g.add_argument('--dist_url', '--dist-url', type=str, default=None,
                   help='rendezvous tcp://HOST:PORT of --multiprocessing-distributed (default tcp://localhost:10001)')
    g.add_argument('--nodes', '--world_size', '--world-size', type=int, default=1,
                   help='number of nodes, with --multiprocessing-distributed')
    g.add_argument('--node_rank', '--rank', type=int, default=0, help='rank of this node')
    g.add_argument('--dist_backend', '--dist-backend', choices=['nccl', 'gloo'], default=None,
                   help='default: nccl on GPUs, gloo on CPUs')
    g.add_argument('--gpu', type=int, default=None, help='GPU of a single-process run')
    g.add_argument('--start_epoch', '--start-epoch', type=int, default=0,
                   help='epochs already done (0-based, as MoCo); a --resume checkpoint overrides it')
    g.add_argument('--output_dir', type=str, default=None,
                   help='write checkpoints here (tensorboard in its tensorboard/) instead of under --save_root')


def add_knn_options(parser):
    g = parser.add_argument_group('kNN monitor')
    g.add_argument('--knn_freq', type=int, default=None,
                   help='weighted kNN accuracy of the trunk every N epochs (default 10 when the dataset has an evaluation split, 0 = off)')
    g.add_argument('--knn_k', type=int, default=200)
    g.add_argument('--knn_t', type=float, default=0.1)
    g.add_argument('--batch_size_val', type=int, default=None, help='batch size for feature extraction')


def add_classifier_options(parser):
    """Options of the scripts that train a classifier (main_linear.py, main_ce.py): SCE's per-step
    schedule, how often to validate, and the separate test of a finished run."""
    g = parser.add_argument_group('schedule, validation and test')
    g.add_argument('--warmup_epochs', type=int, default=None,
                   help='per-step schedule: linear warm-up from 0 over N epochs, then a cosine to 0 (the SCE '
                        'video protocols); replaces --cosine, --lr_decay_epochs and --warm')
    g.add_argument('--val_freq', type=int, default=1,
                   help='validate every N epochs and after the last (videos: one clip and one crop per video); '
                        'the best validation accuracy keeps best.pth')
    g.add_argument('--test', choices=['best', 'last'], default=None,
                   help="train nothing: test this run's best.pth or last.pth (the run the same options train) "
                        'on the evaluation split, videos on --test_clips x --test_crops views, softmax averaged')


def check_classifier_options(args):
    if args.test and args.resume:
        raise UserError('--test trains nothing: drop --resume')
    if args.val_freq < 1:
        raise UserError(f'--val_freq must be at least 1, got {args.val_freq}')
    if args.warmup_epochs is not None:
        if args.warmup_epochs < 0:
            raise UserError(f'--warmup_epochs must be at least 0, got {args.warmup_epochs}')
        if args.warm or args.lr_decay_epochs:
            raise UserError('--warmup_epochs sets a per-step warm-up then cosine schedule: drop --warm and '
                            '--lr_decay_epochs')


def parse_mean_std(args):
    """--mean and --std, given together or not at all, as tuples of floats."""
    if (args.mean is None) != (args.std is None):
        raise UserError('--mean and --std go together: give both or neither')
    if args.mean is not None:
        args.mean, args.std = parse_floats(args.mean, '--mean'), parse_floats(args.std, '--std')


def finish_options(args, force_warm):
    """Derived settings shared by all scripts: defaults, milestones, normalisation, stem, warm-up."""
    try:
        args.lr_decay_epochs = [int(e) for e in str(args.lr_decay_epochs).split(',') if e.strip()]
    except ValueError:
        raise UserError(f'--lr_decay_epochs must be comma-separated integers, got {args.lr_decay_epochs!r}')
    parse_mean_std(args)
    for key, default in (('data_folder', './datasets/'), ('size', 32), ('model', 'resnet50'), ('width', 64)):
        if getattr(args, key) is None:
            setattr(args, key, default)
    if args.stem is None:
        args.stem = default_stem(args.size)
    for name in ('batch_size', 'epochs', 'size', 'width'):
        if getattr(args, name) < 1:
            raise UserError(f'--{name} must be positive, got {getattr(args, name)}')

    if force_warm and args.batch_size > 256:
        args.warm = True  # large-batch runs warm up, as SupContrast does
    if args.warm:
        args.warmup_from = 0.01
        args.warm_epochs = 10
        if args.cosine:
            eta_min = args.learning_rate * args.lr_decay_rate ** 3
            args.warmup_to = eta_min + (args.learning_rate - eta_min) * (
                1 + math.cos(math.pi * args.warm_epochs / args.epochs)) / 2
        else:
            args.warmup_to = args.learning_rate
    return args


def name_run(args, run_name, method_folder, name_width=True):
    """SupContrast's run name (with _cosine, _warm) and folders: save/<Method>/<dataset>_models/<run>/
    and save/<Method>/<dataset>_tensorboard/<run>/. Call after finish_options."""
    if args.cosine:
        run_name += '_cosine'
    if args.warm:
        run_name += '_warm'
    if name_width and args.width != 64:
        run_name += f'_width_{args.width}'
    args.run_name = run_name
    root = os.path.join(args.save_root, method_folder)
    args.save_folder = os.path.join(root, f'{args.dataset}_models', args.run_name)
    args.tb_folder = os.path.join(root, f'{args.dataset}_tensorboard', args.run_name)
    if getattr(args, 'output_dir', None):
        args.save_folder, args.tb_folder = args.output_dir, os.path.join(args.output_dir, 'tensorboard')
