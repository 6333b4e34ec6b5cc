"""Command-line options every script shares, declared once (SupContrast's spellings, with the released
codes' other spellings as aliases), their checks, derived settings, run names and save folders.

The rule: every option either takes effect or ends the run with a one-line error saying why it does
not apply; --help shows each option's real default; `args` is complete when parse_option() returns."""
import argparse
import ast
import math
import os
import sys

from networks.resnet3d import VIDEO_MODEL_NAMES
from networks.resnet_big import MODEL_NAMES, default_stem
from util import UserError
from video_datasets import VIDEO_DATASETS

TORCHVISION_DATASETS = ('cifar10', 'cifar100', 'stl10')
VIDEO_OPTIONS = ('num_frames', 'clip_duration', 'num_clips', 'test_clips', 'test_crops', 'split_id', 'split_dir',
                 'train_list', 'val_list', 'frame_rate')


class _Formatter(argparse.HelpFormatter):
    """Every option's help ends with its default (after any recipe or protocol has set it)."""

    def _get_help_string(self, action):
        text = action.help or ''
        if action.option_strings and action.default is not argparse.SUPPRESS and '(default' not in text \
                and action.default is not None and action.nargs != 0:
            text += ' (default: %(default)s)'
        return text


class Parser(argparse.ArgumentParser):
    """argparse whose errors (a typo'd option, a bad value) end in the same one line as ours."""

    def error(self, message):
        raise UserError(message)


def parser(description):
    return Parser(description=description, formatter_class=_Formatter, add_help=False)


# The valid range of every numeric option of every script, checked in parse() before anything runs.
# A numeric option not named here must be finite and >= 0 (workers, seeds, epochs of a milestone...).
POSITIVE = {'batch_size', 'batch_size_val', 'epochs', 'size', 'width', 'feat_dim', 'moco_dim', 'moco_k', 'print_freq',
            'save_freq', 'num_frames', 'queue_size', 'proj_hidden', 'pred_hidden', 'proj_dim', 'proj_layers',
            'test_clips', 'test_crops', 'tsne_samples', 'val_freq', 'knn_k', 'recall_k', 'nmb_crops', 'size_crops',
            'aug_times', 'aux_topk', 'bn_splits', 'max_steps', 'nodes', 'world_size', 'num_classes', 'clip_duration',
            'frame_rate', 'num_clips', 'mlp_layers', 'warm_epochs', 'trust_coefficient', 'cost', 'positive_weight',
            'split_id', 'lr_decay_rate',
            # temperatures divide similarities: 0 is a division by zero, not a divergence
            'temp', 'moco_t', 'clsa_t', 'temp_m', 'knn_t'}
FRACTION = {'moco_m', 'initial_momentum', 'coeff', 'momentum', 'crop_min_scale', 'min_scale_crops', 'max_scale_crops'}
BELOW_ONE = {'dropout'}


def check_ranges(parser, args):
    """A one-line error for the first numeric option outside its range (POSITIVE, FRACTION, ...)."""
    for action in parser._actions:
        value = getattr(args, action.dest, None)
        if action.type not in (int, float) or value is None:
            continue
        for v in value if isinstance(value, (list, tuple)) else [value]:
            flag = max(action.option_strings, key=len) if action.option_strings else action.dest
            if not math.isfinite(v):
                raise UserError(f'{flag} {v}: must be a finite number')
            name = action.dest
            ok, rule = ((v > 0, '> 0') if name in POSITIVE else (0 <= v <= 1, 'in [0, 1]') if name in FRACTION
                        else (0 <= v < 1, 'in [0, 1)') if name in BELOW_ONE else (v >= 0, '>= 0'))
            if not ok:
                raise UserError(f'{flag} {v:g}: must be {rule}')


def parse(parser, preset=None):
    """Parse the command line; returns (args, the set of options given on it). preset(known) returns
    the defaults a pre-parsed choice selects (a recipe, a protocol), set before the real parse so
    that --help shows them and every flag given still overrides them."""
    if preset is not None:
        required = [a for a in parser._actions if a.required]
        for a in required:  # --help must work without them
            a.required = False
        parser.set_defaults(**preset(parser.parse_known_args()[0]))
        for a in required:
            a.required = True
    parser.add_argument('-h', '--help', action='help', help='show this help and exit')
    args = parser.parse_args()
    check_ranges(parser, args)
    return args, given_options(parser)


def given_options(parser, argv=None):
    """The dests of the options written on the command line (whatever their value)."""
    quiet = Parser(add_help=False)
    for a in parser._actions:
        if isinstance(a, argparse._HelpAction):
            continue
        kwargs = dict(dest=a.dest, default=argparse.SUPPRESS, nargs=a.nargs)
        if a.nargs == 0:  # flags: store_true / BooleanOptionalAction
            kwargs = dict(dest=a.dest, default=argparse.SUPPRESS, action='store_const', const=True)
        quiet.add_argument(*a.option_strings, **kwargs) if a.option_strings else quiet.add_argument(
            a.dest, nargs='?', default=argparse.SUPPRESS)
    return set(vars(quiet.parse_known_args(sys.argv[1:] if argv is None else argv)[0]))


def refuse(given, names, why):
    """A one-line error when any of names was given: it does not apply here, and why."""
    found = [n for n in names if n in given]
    if found:
        raise UserError(f'--{found[0]}: {why}')


def parse_floats(text, name):
    """'(0.4914, 0.4822, 0.4465)' or '0.49,0.48,0.45' -> tuple of floats."""
    try:
        value = ast.literal_eval(text if ',' in text else f'({text},)')
        return tuple(float(v) for v in (value if isinstance(value, (tuple, list)) else [value]))
    except (ValueError, SyntaxError, TypeError):
        raise UserError(f'{name} must be numbers such as "(0.485, 0.456, 0.406)", got {text!r}')


# ----------------------------------------------------------------------------- option groups

def add_common_options(parser, *, batch_size, learning_rate, lr_decay_epochs, lr_decay_rate,
                       weight_decay, epochs, size=32):
    """Options every training script shares, with SupContrast's spellings; each script passes its defaults."""
    g = parser.add_argument_group('run')
    g.add_argument('--print_freq', '--print-freq', '-p', type=int, default=10, help='print every N steps')
    g.add_argument('--save_freq', type=int, default=50, help='keep ckpt_epoch_N.pth every N epochs')
    g.add_argument('--num_workers', '--workers', '-j', type=int, default=16, help='data-loading workers per process')
    g.add_argument('--trial', type=str, default='0', help='id appended to the run name')
    g.add_argument('--seed', type=int, default=None, help='seed every RNG (per process: seed + rank); default: random')
    g.add_argument('--resume', nargs='?', const='auto', default=None, metavar='CKPT',
                   help='continue from CKPT, or from the run folder\'s last.pth when no path is given; the options '
                        'that define the run must be the checkpoint\'s, only --epochs, the print, save and kNN '
                        'frequencies, workers, data and output folders, --trial and the speed options may change')
    g.add_argument('--overwrite', action='store_true',
                   help='replace an earlier run in the run folder (without it, or --resume, a folder holding '
                        'last.pth is refused)')
    g.add_argument('--save_root', type=str, default='./save', help='root of the save/ folders')
    g.add_argument('--amp', choices=['none', 'bf16', 'fp16'], default='none', help='mixed precision')
    g.add_argument('--syncBN', action='store_true', help='synchronise BatchNorm across processes')

    g = parser.add_argument_group('speed (scripts/benchmark.py measures each)')
    g.add_argument('--channels_last', action=argparse.BooleanOptionalAction, default=None,
                   help='channels-last images and weights (default: on with CUDA): faster convolutions on GPUs, '
                        'and on CPUs with oneDNN, where it rounds differently from NCHW, so opt in there')
    g.add_argument('--fused_optimizer', action=argparse.BooleanOptionalAction, default=True,
                   help='the optimiser step in fused (SGD) or multi-tensor (LARS) kernels, else one per parameter')
    g.add_argument('--compile', action='store_true', help='torch.compile the model (the first steps compile)')
    g.add_argument('--gpu_aug', action=argparse.BooleanOptionalAction, default=None,
                   help='draw the views of whole batches on the device (default: on with CUDA where the script '
                        'has device views for its options; --no-gpu_aug: per sample in the workers, as released)')
    g.add_argument('--max_steps', type=int, default=None, metavar='N',
                   help='timing run: stop after N steps, print the time per step (data wait, compute), '
                        'images/s and peak memory of the steps after the first 2; writes no checkpoint')

    g = parser.add_argument_group('optimisation')
    g.add_argument('--batch_size', '--batch-size', '-b', type=int, default=batch_size,
                   help='global batch size (all processes)')
    g.add_argument('--epochs', type=int, default=epochs)
    g.add_argument('--learning_rate', '--lr', type=float, default=learning_rate)
    g.add_argument('--lr_decay_epochs', type=str, default=lr_decay_epochs,
                   help='step schedule milestones, e.g. 700,800,900')
    g.add_argument('--lr_decay_rate', type=float, default=lr_decay_rate)
    g.add_argument('--weight_decay', '--wd', type=float, default=weight_decay)
    g.add_argument('--momentum', type=float, default=0.9, help='SGD (LARS) momentum')
    g.add_argument('--cosine', '--cos', action='store_true', help='cosine schedule (see this script\'s lr_at)')
    g.add_argument('--warm', action='store_true',
                   help='per step, a linear warm-up from --warmup_from over --warm_epochs to where the schedule stands')
    g.add_argument('--warm_epochs', type=int, default=10, help='--warm: its epochs (SupContrast: 10)')
    g.add_argument('--warmup_from', type=float, default=0.01, help='--warm: the first step\'s rate (SupContrast: 0.01)')

    add_data_options(parser, size=size)

    g = parser.add_argument_group('model')
    g.add_argument('--model', '--arch', '-a', type=str, default='resnet50', choices=MODEL_NAMES + VIDEO_MODEL_NAMES)
    g.add_argument('--stem', choices=['cifar', 'imagenet'], default=None,
                   help='cifar: 3x3 conv, no max-pool; imagenet: 7x7/2 conv + max-pool (default: cifar up to 64 px, '
                        'else imagenet)')
    g.add_argument('--width', type=int, default=64, help='channels of the first ResNet stage')


def add_data_options(parser, size=32):
    """The data options, also used alone by the evaluation scripts that train nothing."""
    g = parser.add_argument_group('data')
    g.add_argument('--dataset', type=str, default='cifar10',
                   choices=['cifar10', 'cifar100', 'stl10', 'path', 'imagenet', 'digits', *VIDEO_DATASETS])
    g.add_argument('--data_folder', '--data', type=str, default='./datasets/', help='dataset root')
    g.add_argument('--test_folder', type=str, default=None, help='evaluation split of --dataset path or video')
    g.add_argument('--mean', type=str, default=None,
                   help='per-channel mean, e.g. "(0.4914, 0.4822, 0.4465)" (default: the dataset\'s; ImageNet\'s for path)')
    g.add_argument('--std', type=str, default=None, help='per-channel std, with --mean')
    g.add_argument('--size', type=int, default=size, help='crop size in pixels')
    g.add_argument('--download', action=argparse.BooleanOptionalAction, default=True,
                   help='download cifar10/cifar100/stl10 when missing')




def add_launcher_options(parser, per_node=False):
    """The launcher options of the MoCo and CLSA code, mapped onto ours; `per_node`: the script gives
    them the released meaning of --batch_size and --workers (per_node_batch)."""
    per_node = '; --batch_size and --workers are then per node, as released' if per_node else ''
    g = parser.add_argument_group('launcher (MoCo / CLSA spellings)')
    g.add_argument('--multiprocessing_distributed', '--multiprocessing-distributed', action='store_true',
                   help='one process per visible GPU on this node: relaunches through torchrun' + per_node)
    g.add_argument('--dist_url', '--dist-url', type=str, default='tcp://localhost:10001',
                   help='rendezvous tcp://HOST:PORT of --multiprocessing-distributed')
    g.add_argument('--nodes', '--world_size', '--world-size', type=int, default=1,
                   help='number of nodes, with --multiprocessing-distributed' + per_node)
    g.add_argument('--node_rank', '--rank', type=int, default=0, help='rank of this node')
    g.add_argument('--dist_backend', '--dist-backend', choices=['nccl', 'gloo'], default=None,
                   help='process-group backend (default: nccl on GPUs, gloo on CPUs)')
    g.add_argument('--gpu', type=int, default=None, help='GPU of a single-process run')
    g.add_argument('--start_epoch', '--start-epoch', type=int, default=0,
                   help='epochs already done (0-based, as MoCo); a --resume checkpoint overrides it')
    g.add_argument('--output_dir', type=str, default=None,
                   help='write checkpoints here (tensorboard in its tensorboard/) instead of under --save_root')


def add_optimizer_options(parser, default):
    """--optimizer sgd|lars and LARS's --trust_coefficient (check_optimizer refuses it under SGD)."""
    parser.add_argument('--optimizer', choices=['lars', 'sgd'], default=default,
                        help='LARS: trust coefficient --trust_coefficient, no decay or scaling of 1-D parameters')
    parser.add_argument('--trust_coefficient', type=float, default=1e-3, help='LARS trust coefficient')


def check_optimizer(args, given):
    if args.optimizer != 'lars':
        refuse(given, ('trust_coefficient',), f"it is LARS's; this run uses --optimizer {args.optimizer}")


def add_knn_options(parser, default_freq=None):
    """default_freq None: 10 when the dataset has an evaluation split, else 0 (pretraining)."""
    g = parser.add_argument_group('kNN monitor')
    g.add_argument('--knn_freq', type=int, default=default_freq,
                   help='weighted kNN accuracy of the trunk every N epochs, 0 = off (default: ' +
                        ('10 when the dataset has an evaluation split, else 0)' if default_freq is None
                         else f'{default_freq})'))
    g.add_argument('--knn_k', type=int, default=200, help='neighbours of the kNN vote')
    g.add_argument('--knn_t', type=float, default=0.1, help='temperature of the kNN vote')
    if '--batch_size_val' not in parser._option_string_actions:  # a classifier's validation has its own
        g.add_argument('--batch_size_val', type=int, default=None,
                       help='batch size of feature extraction (default: --batch_size)')


def add_extraction_options(parser, features_dir, num_workers=16):
    """Options of the scripts that evaluate a frozen trunk's features (main_retrieval, main_svm,
    main_transfer); `features_dir`: the cache folder's default, in words."""
    g = parser.add_argument_group('extraction')
    g.add_argument('--ckpt', type=str, required=True, help='checkpoint whose trunk is evaluated (ours or a '
                                                              'published one)')
    g.add_argument('--batch_size', type=int, default=256, help='global batch size of the extraction')
    g.add_argument('--num_workers', '--workers', '-j', type=int, default=num_workers,
                   help='data-loading workers per process')
    g.add_argument('--amp', choices=['none', 'bf16', 'fp16'], default='none', help='mixed precision')
    g.add_argument('--features_dir', type=str, default=None,
                   help=f'where features are cached (default: {features_dir} next to the checkpoint)')
    return g


def check_output_file(path, flag):
    """Before any work: `path` can be written as a file (not a folder; its folder creatable)."""
    if os.path.isdir(path):
        raise UserError(f'{flag} {path} is a folder; name the file to write')
    check_output_folder(os.path.dirname(os.path.abspath(path)), flag)


def check_output_folder(path, flag):
    """Before any work: `path` is, or can be made, a writable folder."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UserError(f'{flag}: cannot write {e.filename or path}: {e.strerror}')
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f'{flag}: cannot write {path}: permission denied')


def finish_extraction_options(args, features_dir):
    """Checks and derives what add_extraction_options declared; `features_dir`: the cache folder's
    default name, a format of {name} (the checkpoint file's name without extension)."""
    if args.batch_size <= 0 or args.num_workers < 0:
        raise UserError(f'--batch_size must be positive and --num_workers not negative, got {args.batch_size} '
                        f'and {args.num_workers}')
    if args.features_dir is None:
        name = os.path.splitext(os.path.basename(args.ckpt))[0]
        args.features_dir = os.path.join(os.path.dirname(os.path.abspath(args.ckpt)), features_dir.format(name=name))
    check_output_folder(args.features_dir, '--features_dir')
    args.syncBN = False  # read by the distributed set-up; nothing is trained here
    args.batch_size_val = args.batch_size


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
    g.add_argument('--num_classes', type=int, default=None, help='checked against the dataset')
    g.add_argument('--batch_size_val', type=int, default=None,
                   help='clips (images) per evaluation batch (default --batch_size); a video takes one per view')


# ----------------------------------------------------------------------------- checks and derived settings

def check_classifier_options(args, given):
    if args.test and args.resume:
        raise UserError('--test trains nothing: drop --resume')
    if args.val_freq < 1:
        raise UserError(f'--val_freq must be at least 1, got {args.val_freq}')
    if args.warmup_epochs is not None:
        if args.warmup_epochs < 0:
            raise UserError(f'--warmup_epochs must be at least 0, got {args.warmup_epochs}')
        refuse(given, ('warm', 'warm_epochs', 'warmup_from', 'lr_decay_epochs', 'cosine', 'lr_decay_rate'),
               '--warmup_epochs sets a per-step warm-up then cosine to 0 schedule; drop it')


def check_schedule(args, given):
    """SupContrast-style step/cosine schedules: a milestone list means nothing under a cosine."""
    if args.cosine:
        refuse(given, ('lr_decay_epochs', 'schedule'), 'the cosine schedule has no milestones; drop it or --cosine')


def parse_mean_std(args):
    """--mean and --std, given together or not at all, as tuples of floats."""
    if (args.mean is None) != (args.std is None):
        raise UserError('--mean and --std go together: give both or neither')
    if args.mean is not None:
        args.mean, args.std = parse_floats(args.mean, '--mean'), parse_floats(args.std, '--std')


def check_data_options(args, given):
    """Data options that do not apply to --dataset."""
    if args.dataset not in TORCHVISION_DATASETS:
        refuse(given, ('download',), f'--dataset {args.dataset} is read from --data_folder, never downloaded')
    if args.dataset not in ('path', 'video'):
        refuse(given, ('test_folder',), f'--dataset {args.dataset} has its own evaluation split; use '
                                        f'--dataset path (or video) for a folder pair')
    if args.dataset not in VIDEO_DATASETS:
        refuse(given, VIDEO_OPTIONS, f'a video option, and --dataset {args.dataset} holds images')
    if args.dataset == 'digits':
        refuse(given, ('data_folder',), 'digits ship with scikit-learn; drop --data_folder')


def finish_options(args, given):
    """Checks and derived settings shared by all training scripts: milestones, normalisation,
    stem, the kNN monitor's defaults, the evaluation batch."""
    try:
        args.lr_decay_epochs = [int(e) for e in str(args.lr_decay_epochs).split(',') if e.strip()]
    except ValueError:
        raise UserError(f'--lr_decay_epochs must be comma-separated integers, got {args.lr_decay_epochs!r}')
    parse_mean_std(args)
    check_data_options(args, given)
    if args.stem is None:
        args.stem = default_stem(args.size)
    for name in ('batch_size', 'epochs', 'size', 'width', 'print_freq', 'save_freq'):
        if getattr(args, name) < 1:
            raise UserError(f'--{name} must be positive, got {getattr(args, name)}')
    if getattr(args, 'output_dir', None) and 'save_root' in given:
        raise UserError('--save_root: --output_dir names the run folder itself; drop one of them')
    if 'knn_freq' in vars(args):
        has_eval_split = args.dataset not in ('path', 'video') or args.test_folder is not None
        if args.knn_freq is None:
            args.knn_freq = 10 if has_eval_split else 0
        if args.knn_freq > 0 and not has_eval_split:
            raise UserError('--knn_freq needs an evaluation split: give --test_folder (or --knn_freq 0)')
        if args.knn_freq <= 0:
            knn_only = ('knn_k', 'knn_t') if 'val_freq' in vars(args) else ('knn_k', 'knn_t', 'batch_size_val')
            refuse(given, knn_only, 'the kNN monitor is off (--knn_freq 0)')
    if args.batch_size_val is None:
        args.batch_size_val = args.batch_size
    if 'warm' in vars(args) and not args.warm:
        refuse(given, ('warm_epochs', 'warmup_from'), 'it shapes the warm-up: add --warm')
    if args.dataset in VIDEO_DATASETS:
        check_video_options(args)
    return args


def launched_processes():
    """Processes of this run as torchrun or srun started it (1 for a plain python)."""
    if 'WORLD_SIZE' in os.environ and 'RANK' in os.environ:
        return int(os.environ['WORLD_SIZE'])
    return int(os.environ.get('SLURM_STEP_NUM_TASKS', 1))


def check_launcher(args, given):
    """MoCo's and CLSA's launcher flags: several nodes need one process per GPU on each."""
    started = launched_processes() > 1 or args.multiprocessing_distributed
    if (args.nodes > 1 or args.node_rank > 0) and not started:
        raise UserError(f'--world_size {args.nodes} --rank {args.node_rank}: several nodes need one process per GPU '
                        f'on each (GPUs and --multiprocessing_distributed, or torchrun/srun)')
    if not started:
        refuse(given, ('dist_backend',), 'a single process starts no process group')


# Set by distributed.relaunch_with_torchrun for the processes it starts: they are still a
# --multiprocessing_distributed run, whatever their command line says (CLSA's is one by default).
RELAUNCHED_ENV = 'MULTIPROCESSING_DISTRIBUTED_RELAUNCH'


def per_node_batch(args, given):
    """MoCo's and CLSA's launcher flags keep the released meaning of --batch_size and --workers:
    per node, each divided over the node's GPUs, so a command of N nodes trains the published
    batch. Under --multiprocessing_distributed (or in the processes it relaunched) or --world_size
    nodes, args.batch_size becomes the global batch (batch x nodes) and args.per_node is set
    (distributed.init_distributed divides the workers once the processes are known); a plain
    python, torchrun or srun run keeps --batch_size global."""
    args.per_node = bool(args.multiprocessing_distributed or 'nodes' in given or os.environ.get(RELAUNCHED_ENV))
    if args.nodes < 1:
        raise UserError(f'--world_size must be at least 1 node, got {args.nodes}')
    if args.per_node:
        args.batch_size *= args.nodes


def gpu_aug_on(args, available=True):
    """Whether this run draws its views on the device: --gpu_aug / --no-gpu_aug as given; unset, on
    with CUDA where the script has device views for its options (`available`). Sets args.gpu_aug."""
    if args.gpu_aug is None:
        args.gpu_aug = available and args.device.type == 'cuda'
    return args.gpu_aug


def resolve_bn_splits(args, given, shuffled=True):
    """--bn_splits: MoCo's single-process shuffle-BN emulation (BatchNorm over this many
    sub-batches, keys shuffled between them). With several processes keys are shuffled across them
    instead (1); `shuffled` False: the run shuffles no keys (SCE --no-shuffle_bn), so 1."""
    processes = launched_processes()
    if not shuffled or processes > 1:
        refuse(given, ('bn_splits',), 'it emulates shuffle-BN on one process, and this run '
               + ('has several (keys are shuffled across them)' if shuffled else 'shuffles no keys (--shuffle_bn)'))
        args.bn_splits = 1
    if args.bn_splits < 1:
        raise UserError(f'--bn_splits must be at least 1, got {args.bn_splits}')
    if args.batch_size % args.bn_splits:
        raise UserError(f'--batch_size {args.batch_size} is not divisible by --bn_splits {args.bn_splits} '
                        f'(shuffle-BN on one process); choose a multiple, or --bn_splits 1 to turn it off')








def check_video_options(args):
    for name in ('num_frames', 'test_clips', 'test_crops'):
        if getattr(args, name) < 1:
            raise UserError(f'--{name} must be at least 1, got {getattr(args, name)}')
    if args.clip_duration <= 0:
        raise UserError(f'--clip_duration must be positive, got {args.clip_duration}')
    if getattr(args, 'num_clips', 2) < 2:
        raise UserError(f'--num_clips {args.num_clips}: contrasting clips of a video needs at least 2')
    if args.frame_rate is not None and args.frame_rate <= 0:
        raise UserError(f'--frame_rate must be positive, got {args.frame_rate}')




def name_run(args, run_name, method_folder, name_width=True):
    """SupContrast's run name (with _cosine, _warm) and folders: save/<Method>/<dataset>_models/<run>/
    and save/<Method>/<dataset>_tensorboard/<run>/. Call after finish_options. The trunk's width and
    a stem other than the size's default are named (else such a run would write into, and resume
    from, the default run's folder), unless name_width is False: run_name holds the trunk's name."""
    if '/' in args.trial or os.sep in args.trial or args.trial.strip('.') == '':
        raise UserError(f'--trial {args.trial!r}: a run name part, not a path: no separators, not . or ..')
    if args.cosine:
        run_name += '_cosine'
    if args.warm:
        run_name += '_warm'
        if (args.warm_epochs, args.warmup_from) != (10, 0.01):  # SupContrast's warm-up keeps its name
            run_name += f'_{args.warm_epochs}_from_{args.warmup_from}'
    if name_width and args.width != 64:
        run_name += f'_width_{args.width}'
    if name_width and args.stem != default_stem(args.size):
        run_name += f'_stem_{args.stem}'
    args.run_name = run_name
    root = os.path.join(args.save_root, method_folder)
    args.save_folder = os.path.join(root, f'{args.dataset}_models', args.run_name)
    args.tb_folder = os.path.join(root, f'{args.dataset}_tensorboard', args.run_name)
    if getattr(args, 'output_dir', None):
        args.save_folder, args.tb_folder = args.output_dir, os.path.join(args.output_dir, 'tensorboard')
