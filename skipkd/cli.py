"""The training scripts' command lines: both parsers (baseline_parser, distill_parser), one
style (--kebab-case), the original project's flags as aliases, presets and --kd-recipe, and
validation that ends in a one-line error. The scripts only call parse_baseline_args /
parse_distill_args; a library caller (the sweep) parses with raising=True and gets a UserError
instead of an exit."""
import argparse
import sys

from .kd import KD_RECIPES, KD_TERMS, parse_kd, resolve_recipe, term_options
from .models import ATTENTION_LAYERS, ECA_PLACEMENTS, MODELS
from .models.pretrained import is_weights_name, torchvision_weights
from .models.registry import known_models

from .argparsing import (BATCH, EPOCHS, SEED, WIDTH, HelpFormatter, OneLineParser, add_bool,  # noqa: F401
                         float_in, fraction, int_in, nonneg_float, nonneg_int, positive_float,
                         positive_int, str2bool)
from .data import DATASETS, MAX_SYNTHETIC_SIZE
from .errors import UserError
from .io.outputs import validate_run_key

__all__ = ["OneLineParser", "RaisingParser", "str2bool", "add_bool", "common_parser", "PRESETS",
           "finalize_args", "kd_spec", "kd_weights", "kd_options", "merge_kd_options",
           "baseline_parser", "distill_parser", "apply_kd_recipe", "parse_baseline_args",
           "parse_distill_args", "SCRIPTS", "parse_script_args", "option_dests", "group_dests"]


def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 instructions (Linux /proc/cpuinfo flags avx512_bf16 or
    amx_bf16); elsewhere False, so that emulated bf16 is never chosen by default."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def attention_name(v):
    if v not in ATTENTION_LAYERS:
        raise argparse.ArgumentTypeError(f"unknown attention {v!r}; choose from "
                                         f"{', '.join(ATTENTION_LAYERS)}")
    return v


def kd_spec(v):
    """--kd: 'none' or registered distillation terms joined by '+' (skipkd.kd.KD_TERMS),
    returned normalised (' skip + logit' -> 'skip+logit')."""
    try:
        return "+".join(parse_kd(v)) or "none"
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def kd_weights(v):
    """--kd-weights 'skip=0.3,logit=1': per-term weights of registered terms."""
    out = {}
    for item in filter(None, (i.strip() for i in str(v).split(","))):
        name, sep, value = item.partition("=")
        if not sep or name.strip() not in KD_TERMS:
            raise argparse.ArgumentTypeError(f"expected name=weight with a registered term "
                                             f"({', '.join(KD_TERMS)}), got {item!r}")
        if name.strip() in out:
            raise argparse.ArgumentTypeError(f"the weight of {name.strip()!r} is given twice")
        out[name.strip()] = float_in(0, 1_000_000)(value)  # pkt's own default is 30,000
    return out


def kd_options(v):
    """--kd-opt 'dkd.beta=8,dkd.warmup=5': options of registered terms, checked against each
    term's declared options -> {term: {key: value}}. A piece without '=' continues the value
    before it: 'skip.stages=all,skip.stage_weights=1,2,4' gives stage_weights '1,2,4'."""
    out, items = {}, []
    for piece in filter(None, (i.strip() for i in str(v).split(","))):
        if "=" not in piece and items:
            items[-1] += "," + piece
        else:
            items.append(piece)
    for item in items:
        lhs, sep, value = item.partition("=")
        name, dot, key = lhs.strip().partition(".")
        if not sep or not dot or name not in KD_TERMS:
            raise argparse.ArgumentTypeError(f"expected term.option=value with a registered term "
                                             f"({', '.join(KD_TERMS)}), got {item!r}")
        try:
            term_options(name, {key: value.strip()})
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        out.setdefault(name, {})[key] = value.strip()
    return out


def merge_kd_options(parser, kd: str, given, weights=None) -> dict:
    """The --kd-opt values (one dict per use of the flag) merged and cast, {term: {key: value}};
    an option of a term that --kd does not choose is an error (it would do nothing)."""
    chosen, merged = parse_kd(kd), {}
    for opts in given or ():
        for name, kv in opts.items():
            merged.setdefault(name, {}).update(kv)
    for name in merged:
        if name not in chosen:
            parser.error(f"--kd-opt sets options of {name!r}, which --kd {kd} does not choose")
    for name in weights or {}:
        if name not in chosen:
            parser.error(f"--kd-weights weighs {name!r}, which --kd {kd} does not choose")
    return {name: {k: term_options(name, kv)[k] for k in kv} for name, kv in merged.items()}


def milestones(v):
    """'150,180,210' -> [150, 180, 210] (epochs, each in 1..100,000)."""
    try:
        out = sorted({int(x) for x in str(v).split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated epochs, got {v!r}") from None
    if not out or out[0] < 1 or out[-1] > 100_000:
        raise argparse.ArgumentTypeError(f"milestones must be epochs in 1..100,000, got {v!r}")
    return out


def model_name(v):
    if v not in MODELS:
        raise argparse.ArgumentTypeError(f"unknown model {v!r}; choose from {known_models()}")
    return v


# spellings that only the original project used (its --lr, --model and --alpha are ours too)
ORIGINAL_ONLY_FLAGS = ("--batch", "--epoch", "--weight_decay", "--model_kd", "--pair_keys",
                       "--ECA", "--ECA_block")

# Values a preset fills in when the flag is not given. Learning rates under 'default' are per
# 128 images and scaled linearly with the batch size; under 'original' they are absolute.
PRESETS = {
    "default": dict(epochs=100, batch_size=128, lr=0.1, lr_scaling="linear", momentum=0.9,
                    nesterov=True, weight_decay=5e-4, warmup_epochs=1.0, t_max=None,
                    schedule="step", crop_padding=4, hflip=True, vflip=False, normalize=True,
                    select_by="acc", eval_batch_size=1024, val_split=0.1,
                    init="model", zero_init_residual=False, bn_weight_decay=True),
    # the original work: SGD lr 0.001, batch 32, CosineAnnealingLR(T_max=200) stepped per epoch,
    # 300 epochs (200 for the baseline), crop + h-flip + v-flip, no normalisation,
    # best checkpoint by validation loss on the test set
    "original": dict(epochs=300, batch_size=32, lr=0.001, lr_scaling="none", momentum=0.9,
                     nesterov=False, weight_decay=5e-4, warmup_epochs=0.0, t_max=200,
                     schedule="epoch", crop_padding=4, hflip=True, vflip=True, normalize=False,
                     select_by="loss", eval_batch_size=100, val_split=0.0,
                    init="model", zero_init_residual=False, bn_weight_decay=True),
    # the KD literature's CIFAR-100 recipe (CRD, Tian et al. 2020; RepDistiller train_student.py,
    # reused by mdistiller and every table since): SGD momentum 0.9 (no Nesterov), weight decay
    # 5e-4, batch 64, 240 epochs, lr 0.05 (0.01 for MobileNetV2/ShuffleV1/ShuffleV2: lr=None
    # picks it per model) divided by 10 at epochs 150, 180 and 210, random crop (padding 4) +
    # horizontal flip, normalised. RepDistiller's tables report the last epoch, mdistiller's
    # (DKD) the best test-set epoch: the test set is the validation set here, so a summary has
    # both (test_acc_last, test_acc_best); --val-split 0.1 gives a held-out protocol instead
    "crd": dict(epochs=240, batch_size=64, lr=None, lr_scaling="none", momentum=0.9,
                nesterov=False, weight_decay=5e-4, warmup_epochs=0.0, t_max=None,
                schedule="multistep", crop_padding=4, hflip=True, vflip=False, normalize=True,
                select_by="acc", eval_batch_size=1024, val_split=0.0,
                    init="model", zero_init_residual=False, bn_weight_decay=True),
    # the ImageNet KD recipe of mdistiller (configs/imagenet/r34_r18/*.yaml: batch 512, lr 0.2)
    # and torchdistill (configs/official/ilsvrc2012/yoshitomo-matsubara/rrpr2020/: batch 256,
    # lr 0.1): SGD momentum 0.9 (no Nesterov), weight decay 1e-4, 100 epochs, the rate divided
    # by 10 at epochs 30, 60 and 90, lr 0.1 per 256 images (0.05 per 128, scaled linearly with
    # the global batch: any GPU count under torchrun). The data are ImageNet's pipeline
    # (--pipeline stream). The published tables report the validation set (test-as-val).
    "imagenet": dict(epochs=100, batch_size=256, lr=0.05, lr_scaling="linear", momentum=0.9,
                     nesterov=False, weight_decay=1e-4, warmup_epochs=0.0, t_max=None,
                     schedule="multistep", lr_milestones=[30, 60, 90], lr_decay=0.1,
                     crop_padding=0, hflip=True, vflip=False, normalize=True, select_by="acc",
                     eval_batch_size=256, val_split=0.0, init="model", zero_init_residual=False,
                     bn_weight_decay=True),
}


def distill_parser(parser_class=None):
    """model_training_mid.py's parser (parser_class: OneLineParser, or RaisingParser for a
    library caller)."""
    p = common_parser("Train a ResNet teacher, then distil a student from it through the "
                      "teacher's skip-connection (shortcut) features.", parser_class)
    g = p.add_argument_group("teacher and student")
    g.add_argument("--teacher", "--model", dest="teacher", type=model_name, default=None,
                   help="teacher architecture (default: resnet34, or the one in --teacher-checkpoint)")
    g.add_argument("--student", "--model_kd", dest="student", type=model_name, default="resnet18",
                   help="student architecture (the same as the teacher = self-distillation)")
    g.add_argument("--teacher-checkpoint", default=None,
                   help="reuse this trained teacher (.pth from saved_pth_model/) instead of training one")
    g.add_argument("--teacher-weights", default=None, metavar="WEIGHTS",
                   help="use the --teacher network with these pretrained weights as the teacher, "
                        "untrained here (a torchvision weights name such as "
                        "ResNet34_Weights.IMAGENET1K_V1, or a state_dict file); its classes must "
                        "be this dataset's (else fine-tune it first: model_training.py "
                        "--init-weights); built without attention")
    g.add_argument("--teacher-init-weights", default=None, metavar="WEIGHTS",
                   help="the teacher trained here starts from these weights: " + "a torchvision weights name (e.g. ResNet50_Weights.IMAGENET1K_V2, fetched into torchvision's cache) or a state_dict file; checked key by key and shape by shape, a classifier head of another class count is replaced and trained")
    g.add_argument("--student-init-weights", default=None, metavar="WEIGHTS",
                   help="the student starts from these weights: " + "a torchvision weights name (e.g. ResNet50_Weights.IMAGENET1K_V2, fetched into torchvision's cache) or a state_dict file; checked key by key and shape by shape, a classifier head of another class count is replaced and trained")
    add_bool(g, "--teacher-random", False,
             "the control of docs/RESULTS.md: distil from the teacher network at a random "
             "initialisation (seeded by --seed, the student's own draws unchanged), never "
             "trained; its architecture is --teacher-checkpoint's (whose weights are not "
             "used) or --teacher/--teacher-width's")
    g.add_argument("--teacher-width", type=WIDTH, default=None,
                   help="teacher base width (default: --width)")
    g.add_argument("--student-width", type=WIDTH, default=None,
                   help="student base width (default: --width)")
    g.add_argument("--teacher-epochs", type=EPOCHS, default=None,
                   help="teacher epochs (default: --epochs)")
    g = p.add_argument_group("distillation")
    g.add_argument("--kd", type=kd_spec, default="skip", metavar="TERMS",
                   help=f"distillation terms joined by '+', from {', '.join(KD_TERMS)} "
                        f"(docs/METHODS.md): skip = alpha * hint MSE (this toolkit's method), "
                        f"logit = beta * Hinton KD, skip+logit = both; none = the student alone "
                        f"with the same recipe (the fair baseline)")
    g.add_argument("--kd-weights", type=kd_weights, default=None, metavar="NAME=W,...",
                   help="per-term weights, e.g. skip=0.3,logit=1 (default: --alpha for skip, "
                        "--beta for logit, each other term's own default)")
    g.add_argument("--kd-opt", type=kd_options, action="append", default=None,
                   metavar="TERM.KEY=V,...",
                   help="options of the chosen terms, e.g. dkd.warmup=5 or logit.standardize=1 "
                        "(repeatable; each term's options and defaults: docs/METHODS.md)")
    g.add_argument("--ce-weight", type=float_in(0, 10_000), default=1.0,
                   help="weight of the student's cross-entropy (Hinton KD's CIFAR-100 runs in the "
                        "literature use 0.1 with logit=0.9: docs/BENCHMARK.md)")
    g.add_argument("--alpha", type=float_in(0, 10_000), default=0.3, help="weight of the skip (hint) loss")
    g.add_argument("--beta", type=float_in(0, 10_000), default=1.0, help="weight of the logit KD loss")
    g.add_argument("--temperature", type=float_in(0, 1000, lo_open=True), default=4.0,
                   help="temperature of the logit term (dkd and dist have their own: "
                        "--kd-opt dkd.temperature=T, dist.tau=T)")
    g.add_argument("--kd-recipe", choices=list(KD_RECIPES), default=None,
                   help="a published recipe for the chosen terms: fills --kd-weights, --kd-opt, "
                        "--ce-weight and --temperature where not given (lskd: logit or dkd with "
                        "logit standardisation; dist-cifar: DIST's CIFAR config; hinton: "
                        "RepDistiller's KD split; docs/PRESETS.md)")
    return p


_UNSET = object()
RECIPE_FLAGS = ("ce_weight", "temperature", "alpha", "beta")  # scalar flags a recipe may fill
# the original work's weight flags, each the weight of one term (--kd-weights wins over them)
LEGACY_WEIGHT_FLAGS = {"alpha": "skip", "beta": "logit"}


def apply_kd_recipe(parser, args, argv=None):
    """--kd-recipe: the recipe's values where the command line gave none (a flag given with its
    default value counts as given); refusals are one-line errors."""
    if args.kd_recipe is None:
        return args
    probe = argparse.Namespace(**dict.fromkeys(RECIPE_FLAGS, _UNSET))
    parser.parse_known_args(argv, namespace=probe)  # argparse fills no default over a set attribute
    given = {d for d in RECIPE_FLAGS if getattr(probe, d) is not _UNSET}
    given |= {LEGACY_WEIGHT_FLAGS[d] for d in given & set(LEGACY_WEIGHT_FLAGS)}  # their terms
    try:
        got = resolve_recipe(args.kd_recipe, parse_kd(args.kd), args.kd_weights, args.kd_opt, given)
    except ValueError as exc:
        parser.error(str(exc))
    args.kd_weights, args.kd_opt = got["kd_weights"] or None, got["kd_opt"]
    args.ce_weight = args.ce_weight if got["ce_weight"] is None else got["ce_weight"]
    args.temperature = args.temperature if got["temperature"] is None else got["temperature"]
    return args


def baseline_parser(parser_class=None):
    """model_training.py's parser (parser_class as distill_parser's)."""
    p = common_parser("Train a baseline ResNet with cross-entropy only (no distillation).",
                      parser_class)
    g = p.add_argument_group("model")
    g.add_argument("--model", "--arch", dest="model", type=model_name, default="resnet18",
                   help="architecture")
    g.add_argument("--init-weights", default=None, metavar="WEIGHTS",
                   help="start from these weights (fine-tuning): " + "a torchvision weights name (e.g. ResNet50_Weights.IMAGENET1K_V2, fetched into torchvision's cache) or a state_dict file; checked key by key and shape by shape, a classifier head of another class count is replaced and trained")
    return p


def parse_baseline_args(argv=None, raising=False):
    """model_training.py's command line -> its arguments, presets and checks applied; an error
    exits with one line (raising=True: raises UserError instead)."""
    parser = baseline_parser(RaisingParser if raising else None)
    # the original baseline ran 200 epochs (the distillation script 300)
    return finalize_args(parser, parser.parse_args(argv), default_placement="none",
                         preset_overrides={"original": {"epochs": 200}}, argv=argv)


def term_weights(args) -> dict:
    """The weight of each term --kd chooses: --kd-weights (or the --kd-recipe's), else the
    original work's flag for it (--alpha for skip, --beta for logit), else the term's own
    default. The only place where --alpha and --beta mean anything."""
    chosen, given = parse_kd(args.kd), args.kd_weights or {}
    legacy = {term: vars(args)[flag] for flag, term in LEGACY_WEIGHT_FLAGS.items()}
    return {t: float(given[t] if t in given else legacy.get(t, KD_TERMS[t].default_weight))
            for t in chosen}


def parse_distill_args(argv=None, raising=False):
    """model_training_mid.py's command line -> its arguments (as parse_baseline_args), the
    --kd-opt values merged, --kd-recipe applied and each term's weight in args.term_weights."""
    parser = distill_parser(RaisingParser if raising else None)
    args = finalize_args(parser, parser.parse_args(argv), default_placement="parallel", argv=argv)
    args.kd_opt = merge_kd_options(parser, args.kd, args.kd_opt, args.kd_weights)
    args = apply_kd_recipe(parser, args, argv)
    args.term_weights = term_weights(args)
    if args.teacher_random and (args.teacher_weights or args.teacher_init_weights):
        parser.error("--teacher-random is a teacher of random weights: it excludes "
                     + ("--teacher-weights" if args.teacher_weights else "--teacher-init-weights"))
    if args.teacher_weights is not None:
        given = [f for f, v in (("--teacher-checkpoint", args.teacher_checkpoint),
                                ("--teacher-init-weights", args.teacher_init_weights)) if v]
        if given:
            parser.error(f"--teacher-weights is the teacher as it is: it excludes {given[0]}")
        if args.teacher is None:
            parser.error("--teacher-weights needs --teacher, the network they belong to "
                         "(e.g. --teacher resnet34_imagenet)")
    return args


# the training scripts: file name -> (parser builder, parse function, the summary's section that
# holds the trained model's result)
SCRIPTS = {"model_training_mid.py": (distill_parser, parse_distill_args, "student"),
           "model_training.py": (baseline_parser, parse_baseline_args, "baseline")}


def parse_script_args(script, argv):
    """A training script's command line parsed as the script parses it -> its arguments; every
    refusal is a UserError (nothing exits, nothing is printed: notes go to stderr)."""
    return SCRIPTS[script][1](list(argv), raising=True)


def option_dests(parser) -> dict:
    """{option string: argparse destination} of a parser built here."""
    return {o: a.dest for a in parser._actions for o in a.option_strings}


def group_dests(parser) -> dict:
    """{argument group title: {destinations}} of a parser built here."""
    return {g.title: {a.dest for a in g._group_actions} for g in parser._action_groups}


# Long on purpose: a flat list of the flags both training scripts share, in --help order;
# splitting it would only scatter them.
class RaisingParser(OneLineParser):
    """A parser for library callers (the sweep checking a trial's flags): an error raises a
    one-line UserError instead of exiting, and so does --help."""

    def error(self, message):
        raise UserError(message)

    def exit(self, status=0, message=None):
        raise UserError((message or f"the parser exited with status {status}").strip())


def common_parser(description, parser_class=None) -> OneLineParser:
    p = (parser_class or OneLineParser)(description=description, formatter_class=HelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="cifar10", choices=list(DATASETS) + ["imagenet", "auto"],
                   help="dataset: cifar10/cifar100 (python batches), fashion-mnist (IDX files, "
                        "1 channel), svhn (.mat files), folder (--data-dir/train/<class>/*, "
                        "--data-dir/test/<class>/*), imagenet (--data-dir/train/<class>/*, "
                        "--data-dir/val/<class>/*, streamed at --image-size 224), synthetic; "
                        "'auto' = cifar10 when found in --data-dir, else the built-in synthetic "
                        "dataset (with a notice)")
    g.add_argument("--pipeline", choices=["auto", "memory", "stream"], default="auto",
                   help="memory: decode every image once into one tensor and augment batches "
                        "with a padded crop and flips (the 32-pixel datasets); stream: decode "
                        "batch by batch in --workers processes with the ImageNet pipeline "
                        "(random-resized crop + flip; resize and centre crop to evaluate; "
                        "ImageNet mean and std). auto: stream for imagenet and for a folder "
                        "dataset at --image-size 128 or more, else memory")
    g.add_argument("--workers", type=int_in(0, 256), default=None,
                   help="loader processes that decode images under --pipeline stream "
                        "(default: min(8, CPU cores); 0 = in the training process)")
    g.add_argument("--data-dir", default="./data", help="folder holding the dataset files")
    add_bool(g, "--download", False, "download the dataset when it is not in --data-dir")
    g.add_argument("--synthetic-train-size", type=int_in(1, MAX_SYNTHETIC_SIZE), default=5000,
                   help="images in the synthetic training split")
    g.add_argument("--synthetic-test-size", type=int_in(1, MAX_SYNTHETIC_SIZE), default=1000,
                   help="images in the synthetic test split")
    g.add_argument("--limit-train", type=positive_int, default=None,
                   help="use only the first N training images (quick runs)")
    g.add_argument("--limit-test", type=positive_int, default=None,
                   help="use only the first N test images (quick runs)")
    g.add_argument("--image-size", type=int_in(8, 1024), default=None,
                   help="folder and imagenet datasets: the size images are cropped to (default: "
                        "32 for folder, 224 for imagenet; the other datasets keep theirs; "
                        "Fashion-MNIST's 28x28 is zero-padded to 32x32)")
    g.add_argument("--val-split", type=fraction, default=None, metavar="FRACTION",
                   help="hold out this fraction of the training set (stratified) for validation "
                        "and checkpoint selection; the test set is then evaluated once per stage "
                        "for the report. 0 = the test set is the validation set (the original "
                        "protocol, optimistic) (default: preset; 0.1, original: 0)")
    g.add_argument("--split-seed", type=SEED, default=0,
                   help="seed of the --val-split split (fixed by default, so runs with different "
                        "--seed validate on the same images)")
    add_bool(g, "--report-test", True, "read the test split and report the test accuracy of "
             "each stage (--no-report-test: the test split is never read, for a search that must "
             "not see it; needs --val-split > 0)", aliases=())
    add_bool(g, "--shuffle", True, "shuffle the training set every epoch", aliases=())

    g = p.add_argument_group("recipe (unset values come from --preset)")
    g.add_argument("--preset", default="default", choices=list(PRESETS),
                   help="'default': modern recipe (SGD nesterov, warm-up + cosine, normalised); "
                        "'original': the original work's hyper-parameters; 'crd': the KD "
                        "literature's CIFAR-100 recipe (240 epochs, step decay; docs/BENCHMARK.md); "
                        "'imagenet': its ImageNet recipe (100 epochs, lr 0.1 per 256 images "
                        "divided by 10 at 30, 60, 90; weight decay 1e-4)")
    g.add_argument("--epochs", "--epoch", dest="epochs", type=EPOCHS, default=None,
                   help="training epochs per stage (default: preset)")
    g.add_argument("--batch-size", "--batch", dest="batch_size", type=BATCH, default=None,
                   help="training batch size (default: preset)")
    g.add_argument("--eval-batch-size", type=BATCH, default=None,
                   help="evaluation batch size (default: preset)")
    g.add_argument("--lr", type=positive_float, default=None,
                   help="learning rate; per 128 images when --lr-scaling linear (default: preset)")
    g.add_argument("--lr-scaling", choices=["linear", "none"], default=None,
                   help="linear: effective lr = lr * batch_size / 128 (default: preset)")
    g.add_argument("--momentum", type=float_in(0, 0.999), default=None, help="SGD momentum (default: preset)")
    add_bool(g, "--nesterov", None, "Nesterov momentum (default: preset)")
    g.add_argument("--weight-decay", "--weight_decay", dest="weight_decay", type=float_in(0, 1),
                   default=None, help="L2 weight decay (default: preset)")
    g.add_argument("--warmup-epochs", type=float_in(0, 100_000), default=None,
                   help="linear warm-up length in epochs (default: preset)")
    g.add_argument("--t-max", type=int_in(1, 1_000_000), default=None,
                   help="the cosine's half period in epochs, under both --schedule values "
                        "(default: the epochs after the warm-up, so the rate ends at 0; "
                        "original: 200)")
    g.add_argument("--schedule", choices=["step", "epoch", "multistep"], default=None,
                   help="cosine updated every step or every epoch, or multistep: step decay by "
                        "--lr-decay at --lr-milestones (default: preset)")
    g.add_argument("--lr-milestones", type=milestones, default=None, metavar="E1,E2,...",
                   help="multistep: the epochs at which the rate is multiplied by --lr-decay "
                        "(default: 150,180,210 of 240 epochs, scaled to --epochs)")
    g.add_argument("--lr-decay", type=float_in(0, 1, lo_open=True), default=0.1,
                   help="multistep: the factor applied at each milestone")
    g.add_argument("--crop-padding", type=int_in(0, 64), default=None,
                   help="zero padding of the random crop in pixels, 0 = no crop (default: preset)")
    add_bool(g, "--hflip", None, "random horizontal flip (default: preset)")
    add_bool(g, "--vflip", None, "random vertical flip (default: preset)")
    add_bool(g, "--normalize", None, "per-channel normalisation with training-set statistics "
                                     "(default: preset)")
    g.add_argument("--select-by", choices=["acc", "loss"], default=None,
                   help="best checkpoint by validation accuracy or loss (default: preset)")
    g.add_argument("--init", choices=["model", "orthogonal", "kaiming"], default=None,
                   help="weight initialisation: the family's own (model), orthogonal (this "
                        "toolkit's), kaiming (RepDistiller's) (default: preset)")
    add_bool(g, "--zero-init-residual", None, "start the last BatchNorm of every residual branch "
                                              "at weight 0 (Goyal et al. 2017) (default: preset)")
    add_bool(g, "--bn-weight-decay", None, "apply --weight-decay to BatchNorm weights and all "
                                           "biases too (default: preset)")
    g.add_argument("--seed", type=SEED, default=0, help="random seed")
    g.add_argument("--bn-recalibrate", type=int_in(0, 10_000), default=0, metavar="N",
                   help="before each evaluation, re-estimate BatchNorm statistics over N training "
                        "batches (0 = off). Helps when a short first epoch with warm-up shows a "
                        "huge validation loss: the running statistics lag the weights")

    g = p.add_argument_group("models")
    g.add_argument("--width", "--base-width", dest="width", type=WIDTH, default=None,
                   help="base width of the networks (default: each model's reference width, "
                        "e.g. 64 for resnet18..152, 16 for resnet20, 32 for resnet8x4; 8-16 "
                        "for CPU runs of the 4-stage ResNets)")
    # a group of its own: a sweep's shared teacher does not take these from a student's flags
    g = p.add_argument_group("attention", "in every network of the run")
    g.add_argument("--placement", "--attn-placement", "--eca", "--eca-placement", dest="placement",
                   choices=ECA_PLACEMENTS, default=None,
                   help="where attention goes, in every network of the run: none, parallel "
                        "(additive on the stage-1 shortcuts, the original idea), last (the hint "
                        "block), all (every block); any placement registered with "
                        "skipkd.models.register_placement (default: parallel for "
                        "model_training_mid.py, none for model_training.py)")
    g.add_argument("--attn", type=attention_name, default="eca",
                   help="the attention module that --placement places: eca (ECA-Net) or se "
                        "(Squeeze-and-Excitation); any module registered with "
                        "skipkd.models.register_attention")
    g.add_argument("--eca-k", type=int_in(1, 255), default=None,
                   help="ECA kernel size (odd) (default: ECA-Net's adaptive rule per layer)")
    g.add_argument("--ECA", dest="eca_yes", type=str2bool, default=None, metavar="yes|no",
                   help="original flag: with ECA or without (alias of --placement)")
    g.add_argument("--ECA_block", dest="eca_block", choices=["parallel", "last"], default=None,
                   help="original flag: ECA 'parallel' or 'last' (alias of --placement)")

    g = p.add_argument_group("system and outputs")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    g.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="training autocast precision; auto = bf16 on CUDA GPUs and CPUs with "
                        "native bf16 instructions (AVX512-BF16/AMX; measured 1.3-1.5x faster with "
                        "unchanged accuracy, docs/BENCHMARKS.md), else fp32. fp16 uses a grad "
                        "scaler (CUDA only). Evaluation always runs in fp32")
    add_bool(g, "--channels-last", True, "channels_last memory format (measured faster on CPU "
                                         "and GPU)")
    add_bool(g, "--compile", False, "torch.compile: on CUDA the trained model and the teacher; "
                                    "on the CPU only the teacher's inference (compiling the CPU "
                                    "training step measured slower)")
    g.add_argument("--compile-mode", choices=["default", "reduce-overhead", "max-autotune"],
                   default="default",
                   help="torch.compile's mode with --compile: reduce-overhead replays the step "
                        "as CUDA graphs (less launch overhead for small models), max-autotune "
                        "also searches kernels (long compile)")
    add_bool(g, "--sync-bn", False, "SyncBatchNorm across processes of a torchrun launch")
    g.add_argument("--output-dir", default=".",
                   help="root for saved_pth_model/, numpy_outputs/ and runs/")
    g.add_argument("--run-name", "--pair_keys", "--pair-keys", dest="run_name", default=None,
                   help="key naming this run's files (default: built from the arguments)")
    add_bool(g, "--overwrite", False, "replace the outputs of an earlier run with the same key")
    add_bool(g, "--resume", False, "continue an interrupted run (same command plus --resume) "
                                   "from its saved state: the teacher or the student stage")
    add_bool(g, "--progress", True, "progress bars (plain lines when not on a terminal)")
    add_bool(g, "--tensorboard", True, "write TensorBoard logs under runs/")
    return p


def finalize_args(parser, args, default_placement, preset_overrides=None, argv=None):
    """Fill preset values, resolve aliases and check cross-flag constraints.
    preset_overrides: {preset: {key: value}} for a script's own preset differences.
    argv: the command line (default sys.argv[1:]), to see which flag spellings were used."""
    preset = {**PRESETS[args.preset], **(preset_overrides or {}).get(args.preset, {})}
    for key, value in preset.items():
        if vars(args).get(key) is None:  # a preset's key that the command line left unset
            setattr(args, key, value)
    if args.eca_yes is not None or args.eca_block is not None:
        if args.placement is not None:
            parser.error("give either --placement or the original --ECA/--ECA_block, not both")
        args.placement = "none" if args.eca_yes is False else (args.eca_block or "parallel")
    elif args.placement is None:
        args.placement = default_placement
    if args.image_size is None:  # ImageNet's standard crop; 32 for everything else
        args.image_size = 224 if args.dataset == "imagenet" else 32
    if args.dataset == "imagenet" and args.pipeline == "memory":
        parser.error("--dataset imagenet is streamed from its files: --pipeline memory would "
                     "decode all of it into memory")
    if args.pipeline == "stream" and args.dataset not in ("folder", "imagenet"):
        parser.error(f"--pipeline stream reads image files: --dataset folder or imagenet, not "
                     f"{args.dataset}")
    for flag in ("init_weights", "student_init_weights", "teacher_init_weights",
                 "teacher_weights"):  # a mistyped weights name: now, not after the data scan
        spec = vars(args).get(flag)
        if spec is not None and is_weights_name(spec):
            try:
                torchvision_weights(spec)
            except ValueError as exc:
                parser.error(f"--{flag.replace('_', '-')}: {exc}")
    if args.eca_k is not None and args.eca_k % 2 == 0:
        parser.error(f"--eca-k must be odd, got {args.eca_k}")
    if args.precision == "fp16" and not str(args.device).startswith("cuda") and args.device != "auto":
        parser.error("--precision fp16 needs a CUDA device; use bf16 on the CPU")
    if args.precision == "auto":
        import torch
        cuda = torch.cuda.is_available() and not str(args.device).startswith("cpu")
        native = torch.cuda.is_bf16_supported() if cuda else cpu_has_native_bf16()
        args.precision = "bf16" if native else "fp32"
    if args.resume and args.overwrite:
        parser.error("--resume and --overwrite exclude each other")
    if args.preset == "default":
        used = [f for f in ORIGINAL_ONLY_FLAGS if any(a == f or a.startswith(f + "=")
                                                       for a in (argv or sys.argv[1:]))]
        if used:
            print(f"note: original flags ({', '.join(used)}) are read under --preset "
                  f"{args.preset}: --lr is per 128 images (here {args.lr:g} x "
                  f"{args.batch_size}/128 = {args.lr * args.batch_size / 128:g} when "
                  f"--lr-scaling is linear), with warm-up + cosine and a held-out validation "
                  f"split; add --preset original for the original recipe")
    if args.warmup_epochs > args.epochs:
        parser.error(f"--warmup-epochs {args.warmup_epochs:g} is longer than the run "
                     f"(--epochs {args.epochs})")
    if args.run_name is not None:
        try:
            validate_run_key(args.run_name)
        except UserError as exc:
            parser.error(str(exc))
    return args
