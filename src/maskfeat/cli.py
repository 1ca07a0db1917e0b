"""The ``maskfeat`` command line: one entry point, one sub-command per job.

    maskfeat pretrain  -c CONFIG.yaml [key=value ...]
    maskfeat finetune  -c CONFIG.yaml [key=value ...]
    maskfeat linprobe  -c CONFIG.yaml [key=value ...]
    maskfeat evaluate  -c CONFIG.yaml [key=value ...]
    maskfeat visualize -c CONFIG.yaml [key=value ...]
    maskfeat detect    -c CONFIG.yaml [key=value ...]
    maskfeat export    CHECKPOINT OUT_DIR [--hub]
    maskfeat convert   SRC OUT_DIR

Errors print one line (``maskfeat: error: ...``) and exit with status 2; ``--debug`` shows the traceback.
A run stopped by SIGTERM / SIGUSR1 saves a checkpoint and exits with status 75 (EX_TEMPFAIL): rerun to resume.
Ctrl-C does the same (exit status 130); a second Ctrl-C stops at once, losing the work since the last checkpoint.
Each command imports its modules when it runs: ``--help`` and a config error never import torch.
"""

from __future__ import annotations

import argparse
import sys

from maskfeat.errors import Interrupted, NonFiniteLossError, Preempted

PREEMPTED_EXIT = 75  # EX_TEMPFAIL: try again (resume)

COMMANDS = {
    "pretrain": "MaskFeat pre-training: predict the HOG of masked patches (writes encoder.safetensors)",
    "finetune": "fine-tune a (pre-trained) encoder for image classification; evaluates top-1/top-5 each epoch",
    "linprobe": "linear probe: train a BatchNorm + linear head on the frozen encoder",
    "evaluate": "top-1/top-5 of a finetune or linprobe checkpoint (frame mAP of a detect one) on data.val_path",
    "visualize": "draw input, masked input, HOG target and predicted HOG for a pre-training checkpoint",
    "detect": "fine-tune a video encoder for action detection on AVA-format data; evaluates frame mAP each epoch",
}

EPILOG = """overrides are dotted keys into the config, e.g. train.epochs=1 data.path=/data/train output_dir=runs/x.
Run 'maskfeat {cmd} --keys' to list every key with its value and what it does."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maskfeat",
        description="MaskFeat: masked feature prediction "
        "for self-supervised visual pre-training (Wei et al., CVPR 2022).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=EPILOG.format(cmd=name),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("-c", "--config", metavar="CONFIG.yaml", help="YAML file of overrides to the defaults")
        p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
        p.add_argument(
            "--keys",
            action="store_true",
            help="print every config key with its value and description (a YAML config file) and exit",
        )
        p.add_argument("--debug", action="store_true", help="show tracebacks")
    p = _file_command(
        sub, "export", "CHECKPOINT", "checkpoint-*.pt, encoder.safetensors or a folder of convert, export or a run",
        help="write encoder.safetensors + encoder.json (timm) from a checkpoint; --hub: a timm / Hub folder",
        description="Write encoder.safetensors + encoder.json (loadable by timm.create_model) from any maskfeat "
        "checkpoint.",
    )  # fmt: skip
    p.add_argument(
        "--allow-pickle", action="store_true", help="read a checkpoint holding pickled objects (trusted files only)"
    )
    p.add_argument(
        "--hub",
        action="store_true",
        help="write config.json + model.safetensors + README.md (a model "
        "card): a folder timm.create_model('local-dir:OUT_DIR', pretrained=True) loads, ready for the Hub",
    )
    p.add_argument("--license", default="apache-2.0", help="--hub: the license the model card and config name "
                   "(default: apache-2.0)")  # fmt: skip
    _file_command(sub, "convert", "SRC", "an official SlowFast .pyth, an mmpretrain MaskFeat ViT checkpoint or "
                  "torchvision MViTv2 weights", help="convert official MaskFeat (SlowFast .pyth), mmpretrain or "
                  "torchvision MViTv2 weights", description="Convert the weights of another implementation into a "
                  "folder every command reads with model.checkpoint=OUT_DIR: encoder.safetensors + encoder.json and, "
                  "for pre-training checkpoints, maskfeat.safetensors (encoder, [MASK] token, prediction head). The "
                  "source is read with torch.load(weights_only=True).")  # fmt: skip
    return parser


def _file_command(sub, name: str, source: str, source_help: str, **kwargs) -> argparse.ArgumentParser:
    """A command that reads one file (``source``) and writes a folder (OUT_DIR), with ``--debug``."""
    p = sub.add_parser(name, **kwargs)
    p.add_argument(source.lower(), metavar=source, help=source_help)
    p.add_argument("out_dir", metavar="OUT_DIR", help="folder to write into")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def _version() -> str:
    from maskfeat import __version__

    return __version__


def _run(args: argparse.Namespace) -> int:
    from maskfeat.tracking import setup_logging

    setup_logging(args.debug)
    if args.command in ("export", "convert"):
        return _run_file_command(args)

    from maskfeat.config import load_config, to_yaml

    cfg = load_config(args.command, args.config, args.overrides, check_paths=not args.keys)
    if args.keys:  # valid YAML: save it and pass it back with -c
        print(f"# maskfeat {args.command}: every config key, its value and what it does")
        print(to_yaml(cfg, descriptions=True), end="")
        return 0
    if args.command == "pretrain":
        from maskfeat.pretrain import run_pretrain

        run_pretrain(cfg)
    elif args.command in ("finetune", "linprobe"):
        from maskfeat import finetune

        getattr(finetune, f"run_{args.command}")(cfg)
    elif args.command == "evaluate":
        from maskfeat.evaluate import run_evaluate

        run_evaluate(cfg)
    elif args.command == "visualize":
        from maskfeat.visualize import run_visualize

        run_visualize(cfg)
    elif args.command == "detect":
        from maskfeat.detect import run_detect

        run_detect(cfg)
    return 0


def _run_file_command(args: argparse.Namespace) -> int:
    """``export`` and ``convert``: files in, files out, no config."""
    if args.command == "convert":
        from maskfeat.convert import convert, write_converted

        result = convert(args.src)
        paths = write_converted(result, args.out_dir)
        what = "pre-training model" if result.pretrain_state is not None else "encoder"
        print(f"{args.src}: {result.encoder_meta['architecture']} {what}; wrote {', '.join(paths)}")
        return 0
    from maskfeat.export import run_export

    paths = run_export(args.checkpoint, args.out_dir, allow_pickle=args.allow_pickle, hub=args.hub,
                       license=args.license)  # fmt: skip
    print(f"wrote {', '.join(paths)}")
    return 0


def _say(line: str) -> None:
    """One line on stderr in a single write: under torchrun every rank may say it at once, and lines written in
    one piece (under the pipe's 4 KiB) do not interleave."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except KeyboardInterrupt:
        _say("maskfeat: interrupted")
        return 130
    except Preempted as e:
        _say(f"maskfeat: {e}")
        return 130 if isinstance(e, Interrupted) else PREEMPTED_EXIT
    except Exception as e:  # one line for the user; the traceback with --debug
        if getattr(args, "debug", False):
            raise
        expected = isinstance(e, (ValueError, OSError, NonFiniteLossError))
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if not expected:
            message = f"{type(e).__name__}: {message} (run with --debug for the traceback)"
        _say(f"maskfeat: error: {message}")
        return 2
