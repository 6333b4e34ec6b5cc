"""The options of video data (--dataset video, kinetics, ucf101, hmdb51; --model r3d18, r3d50): their
group, the checks that model, data and views agree, and what a video run adds to its name."""
from networks.resnet3d import VIDEO_MODEL_NAMES
from options import refuse
from util import UserError
from video_datasets import VIDEO_DATASETS


def add_video_options(parser, num_frames=8, num_clips=False):
    """The options of video data. Scripts that evaluate a checkpoint pass num_frames=None and take
    its frames (frames_of_checkpoint); `num_clips`: the pretraining script takes --num_clips (rho)
    clips of each video (SCE's loss is defined on its two clips, so main_sce has no such option)."""
    g = parser.add_argument_group('video (--dataset video, kinetics, ucf101, hmdb51)')
    g.add_argument('--num_frames', type=int, default=num_frames,
                   help='frames per clip, spread uniformly over --clip_duration' +
                        ('' if num_frames else ' (default: the frames the checkpoint was trained on, else 8)'))
    g.add_argument('--clip_duration', type=float, default=2.56, help='seconds a clip covers')
    if num_clips:
        g.add_argument('--num_clips', type=int, default=2,
                       help='pretraining: clips (rho >= 2) drawn at independent random times of each video, each '
                            'with its own view (rhoMoCo / rhoSimCLR, Feichtenhofer et al. CVPR 2021)')
    g.add_argument('--test_clips', type=int, default=10, help='clips per video at test time, spread uniformly')
    g.add_argument('--test_crops', type=int, default=3, help='spatial crops per test clip')
    g.add_argument('--split_id', type=int, choices=[1, 2, 3], default=1, help='UCF101 / HMDB51 split')
    g.add_argument('--split_dir', type=str, default=None,
                   help='UCF101 (classInd.txt, trainlist0N.txt, testlist0N.txt) or HMDB51 (<class>_test_splitN.txt) '
                        'split files (default: ucfTrainTestlist/ or testTrainMulti_7030_splits/ in or beside '
                        '--data_folder, else --data_folder)')
    g.add_argument('--train_list', type=str, default=None,
                   help='kinetics: list of training videos (default --data_folder/train.csv or train.txt; '
                        'without one, the class folders of --data_folder/train)')
    g.add_argument('--val_list', type=str, default=None, help='kinetics: list of validation videos (likewise val)')
    g.add_argument('--frame_rate', type=float, default=None,
                   help='frames per second of frame folders (default 30; ucf101 25)')


def check_model_fits_data(args):
    """A video trunk reads clips and a 2D one images: --model and --dataset must agree."""
    video_model, video_data = args.model in VIDEO_MODEL_NAMES, args.dataset in VIDEO_DATASETS
    if video_data and not video_model:
        raise UserError(f'--dataset {args.dataset} holds videos but the trunk {args.model} reads images; '
                        f'use a video trunk ({" or ".join(VIDEO_MODEL_NAMES)})')
    if video_model and not video_data:
        raise UserError(f'the trunk {args.model} reads videos but --dataset {args.dataset} holds images; '
                        f'use a video --dataset ({", ".join(VIDEO_DATASETS)})')


def check_video_pretraining(args, given, image_only, why=None):
    """--model and --dataset agree (check_model_fits_data); a video run refuses `image_only`, the
    options of the script's image views (multi-crop, constrained cropping, AutoAugment...)."""
    check_model_fits_data(args)
    if args.dataset in VIDEO_DATASETS:
        refuse(given, image_only, why or f'an option of image views, and --dataset {args.dataset} holds videos '
                                         f'(each of the --num_clips clips gets one view of --size); drop it')


def video_run_name(args):
    """What a video run adds to its run name: --num_clips (where the script has it) and --num_frames."""
    if args.dataset not in VIDEO_DATASETS:
        return ''
    return (f'_clips_{args.num_clips}' if 'num_clips' in vars(args) else '') + f'_frames_{args.num_frames}'


def frames_of_checkpoint(args, saved_args):
    """--num_frames, else the frames the checkpoint (its saved options) was trained on, else 8."""
    if args.num_frames is None:
        args.num_frames = saved_args.get('num_frames') or 8
