"""The `colorizer` command: every pipeline stage by hand, plus bulk colorization.

Each subcommand loads params.yaml through the typed config, then calls one library function.
User mistakes (bad params, missing inputs) end with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from colorizer.runtime import leave_blocked_threads, run_entry, setup_logging, setup_process

if TYPE_CHECKING:  # imported where used: worker processes import this module (spawn re-imports __main__)
    from colorizer.config import Params

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], bool]] = {}


def command(name: str, help_text: str, needs_params: bool = True):
    def register(add_arguments):
        COMMANDS[name] = (help_text, add_arguments, needs_params)
        return add_arguments

    return register


@command("fetch", "Gather photos from params' sources into accepted sRGB images and a manifest.")
def _fetch_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=Path("data"), help="the user's photo folder (default: data)")
    parser.add_argument("--out", type=Path, default=Path("work/fetch"), help="output folder")
    parser.add_argument("--cache", type=Path, default=Path(".cache/downloads"), help="download cache folder")
    parser.add_argument("--corpus", type=Path, default=Path("corpus"), help="the corpus `make corpus` built")
    parser.add_argument("--summary", type=Path, default=Path("metrics/fetch.json"), help="summary JSON (DVC metrics)")
    parser.set_defaults(run=_run_fetch)


def _run_fetch(args: argparse.Namespace, params: Params) -> None:
    from colorizer.data.fetch import fetch

    summary = fetch(params.fetch, args.data, args.out, args.cache, args.summary, corpus_dir=args.corpus)
    print(json.dumps(summary))


@command("corpus", "Download the pinned Debian packages of corpus.yaml and select their photos.", needs_params=False)
def _corpus_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spec", type=Path, default=Path("corpus.yaml"), help="reviewed list (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("corpus"), help="corpus folder (default: %(default)s)")
    parser.add_argument("--cache", type=Path, default=Path(".cache/debs"), help="downloaded packages")
    parser.set_defaults(run=_run_corpus)


def _run_corpus(args: argparse.Namespace, params: Params) -> None:
    from colorizer.data.corpus import build_corpus

    summary = build_corpus(args.spec, args.out, args.cache)
    print(json.dumps({"photos": summary.photos, "by_package": summary.by_package}))


@command("augment", "Make fixed-size training variants and val/test crops from the fetched photos.")
def _augment_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fetched", type=Path, default=Path("work/fetch"))
    parser.add_argument("--out", type=Path, default=Path("work/augment"))
    parser.set_defaults(run=_run_augment)


def _run_augment(args: argparse.Namespace, params: Params) -> None:
    from colorizer.data.augment import augment

    print(json.dumps(augment(params.augment, params.seed, args.fetched, args.out)))


@command("shard", "Convert the augmented packs to memory-mappable CIE Lab shards.")
def _shard_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--augmented", type=Path, default=Path("work/augment"))
    parser.add_argument("--out", type=Path, default=Path("work/shards"))
    parser.set_defaults(run=_run_shard)


def _run_shard(args: argparse.Namespace, params: Params) -> None:
    from colorizer.data.shards import write_shards

    index = write_shards(args.augmented, args.out, params.shard.images_per_shard)
    print(json.dumps({split: info["count"] for split, info in index["splits"].items()}))


@command("train", "Train the GAN on the Lab shards (resumes from the last checkpoint) and export the generator.")
def _train_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shards", type=Path, default=Path("work/shards"))
    parser.add_argument("--model", type=Path, default=Path("work/model"), help="where the generator is exported")
    parser.add_argument("--state", type=Path, default=Path("work/train"), help="checkpoint and sample grids")
    parser.add_argument("--plots", type=Path, default=Path("plots/train.csv"), help="per-epoch losses (DVC plots)")
    parser.add_argument("--samples", type=Path, default=Path("plots/samples.png"), help="the final sample grid")
    parser.add_argument("--metrics", type=Path, default=Path("metrics/train.json"))
    parser.set_defaults(run=_run_train)


def _run_train(args: argparse.Namespace, params: Params) -> None:
    from colorizer.training.train import train

    final = train(params, args.shards, args.model, args.state, args.plots, args.metrics, samples_path=args.samples)
    print(json.dumps(final))


@command("evaluate", "Score the trained generator and the greyscale baseline on val and test.")
def _evaluate_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, default=Path("work/model"))
    parser.add_argument("--shards", type=Path, default=Path("work/shards"))
    parser.add_argument("--metrics", type=Path, default=Path("metrics/evaluate.json"))
    parser.add_argument("--per-image", type=Path, default=Path("work/evaluate/per_image.csv"))
    parser.set_defaults(run=_run_evaluate)


def _run_evaluate(args: argparse.Namespace, params: Params) -> None:
    from colorizer.training.evaluate import describe, evaluate

    summary = evaluate(params.evaluate, params.train, args.model, args.shards, args.metrics, args.per_image)
    print(describe(summary))


@command("register", "Log the trained model into its MLflow run as a served model and register a version.")
def _register_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, default=Path("work/model"))
    parser.add_argument("--train-metrics", type=Path, default=Path("metrics/train.json"), help="its choice scores")
    parser.set_defaults(run=_run_register)


def _run_register(args: argparse.Namespace, params: Params) -> int:
    from colorizer.serving.register import register

    uri = register(args.model, args.train_metrics)
    if uri:
        print(uri)
    return 0 if uri else 1


# Defaults a cluster job or a shell profile can set once (flags still win); shown in `colorize --help`.
ENVIRONMENT_DEFAULTS = {"COLORIZER_MODEL": "--model", "COLORIZER_DEVICE": "--device", "COLORIZER_WORKERS": "--workers"}


@command("colorize", "Colorize a folder or archive of photos into DST at full resolution.", needs_params=False)
def _colorize_args(parser: argparse.ArgumentParser) -> None:
    from typing import get_args

    from colorizer.config import ColorizeOptions, ImageFormat

    default = ColorizeOptions()
    parser.epilog = "environment: " + "; ".join(
        f"{var} sets the default of {flag}" for var, flag in ENVIRONMENT_DEFAULTS.items()
    )
    parser.add_argument(
        "src",
        metavar="SRC",
        help="folder (walked recursively), .zip/.tar/.tar.gz archive or one image; a path or an fsspec URL "
        "(s3://bucket/scans/, zip::s3://bucket/scans.zip, gs://, az://, file://)",
    )
    parser.add_argument("dst", metavar="DST", help="output folder, a path or a URL; mirrors SRC's relative paths")
    parser.add_argument(
        "--model",
        type=Path,
        default=os.environ.get("COLORIZER_MODEL") or None,
        help="trained model folder, e.g. work/model (default: COLORIZER_MODEL, else the shipped model, see its "
        "MODEL_CARD.md)",
    )
    parser.add_argument("--size", type=int, help="model input size (default: the size it was trained at)")
    parser.add_argument(
        "--batch-size", type=int, default=default.batch_size, help="images per model call (%(default)s)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=os.environ.get("COLORIZER_WORKERS") or None,
        help="decoders/encoders (default: COLORIZER_WORKERS, else cores - 1, at least 2; 0: none)",
    )
    parser.add_argument(
        "--worker-kind",
        default=default.worker_kind,
        choices=get_args(ColorizeOptions.model_fields["worker_kind"].annotation),
        help="auto, threads or processes. auto: threads beside a model on the CPU, processes beside a GPU; "
        "processes isolate a crashing decoder (default: %(default)s)",
    )
    parser.add_argument(
        "--device",
        default=os.environ.get("COLORIZER_DEVICE") or default.device,
        help="auto, cpu, cuda or cuda:N (default: COLORIZER_DEVICE, else auto)",
    )
    parser.add_argument(
        "--format", type=str.upper, choices=get_args(ImageFormat), help="output format (default: the input's)"
    )
    parser.add_argument("--quality", type=int, default=default.quality, help="JPEG/WebP quality (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="redo outputs that already exist")
    parser.add_argument("--strict", action="store_true", help="exit 1 if any input failed")
    parser.add_argument(
        "--dry-run", action="store_true", help="list what would be colorized, skipped or refused; write nothing"
    )
    ray = parser.add_argument_group("cluster", "--engine ray: Ray Data over a cluster (pip install 'colorizer[ray]')")
    ray.add_argument(
        "--engine",
        default=default.engine,
        choices=get_args(ColorizeOptions.model_fields["engine"].annotation),
        help="(default: %(default)s)",
    )
    ray.add_argument("--address", help="the Ray cluster: auto or HOST:PORT (default: RAY_ADDRESS, else a local Ray)")
    ray.add_argument("--actors", type=int, help="model actors (default: one per GPU in the cluster, else 1)")
    ray.add_argument(
        "--cpus-per-actor", type=float, default=default.cpus_per_actor, help="CPUs (torch threads) per model actor"
    )
    ray.add_argument("--gpus-per-actor", type=float, help="GPUs per model actor (default: 1 where there are GPUs)")
    parser.set_defaults(run=_run_colorize)


def _run_colorize(args: argparse.Namespace, params: Params) -> int:
    from colorizer.config import ColorizeOptions

    # every option that has a flag (the rest, such as max_pixels, keep their defaults); checked before
    # torch is imported: a mistake is one line in well under a second
    flags = [name for name in ColorizeOptions.model_fields if hasattr(args, name)]
    options = ColorizeOptions.from_flags(**{flag: getattr(args, flag) for flag in flags})
    from colorizer.colorize.bulk import colorize
    from colorizer.training.checkpoints import PRETRAINED_DIR

    if args.dry_run:
        return _print_dry_run(args.src, args.dst, options)
    summary = colorize(args.src, args.dst, args.model or PRETRAINED_DIR, options)
    return 1 if args.strict and summary.count("failed") else 0


def _print_dry_run(src: str, dst: str, options) -> int:
    """One tab-separated line per input on stdout (action, input, output or reason); counts on stderr."""
    import csv
    import logging
    from collections import Counter

    from colorizer.colorize.bulk import dry_run

    counts: Counter[str] = Counter()
    out = csv.writer(sys.stdout, delimiter="\t", lineterminator="\n")
    for action, relative, detail in dry_run(src, dst, options):
        counts[action] += 1
        out.writerow([action, relative, detail])
    logging.getLogger("colorizer").info(
        "dry run: %d to colorize, %d skipped, %d refused; nothing was written",
        *(counts["colorize"], counts["skip"], counts["fail"]),
    )
    return 0


@command("showcase", "The DVC `showcase` stage: colorize params' showcase.input and draw a contact sheet.")
def _showcase_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fetched", type=Path, default=Path("work/fetch"))
    parser.add_argument("--model", type=Path, default=Path("work/model"))
    parser.add_argument("--out", type=Path, default=Path("work/showcase"))
    parser.add_argument("--contact-sheet", type=Path, default=Path("plots/contact_sheet.png"))
    parser.add_argument("--metrics", type=Path, default=Path("metrics/showcase.json"))
    parser.set_defaults(run=_run_showcase)


def _run_showcase(args: argparse.Namespace, params: Params) -> None:
    from colorizer.colorize.showcase import showcase

    print(json.dumps(showcase(params.showcase, args.fetched, args.model, args.out, args.contact_sheet, args.metrics)))


@command(
    "ship", "Make a trained model the shipped default: fp16 weights, model.json and the before/after picture.", False
)
def _ship_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, default=Path("work/model"), help="trained model (default: %(default)s)")
    parser.add_argument("--fetched", type=Path, default=Path("work/fetch"), help="its fetch output (test photos)")
    parser.add_argument("--out", type=Path, help="where to write it (default: the package's pretrained/ folder)")
    parser.set_defaults(run=_run_ship)


def _run_ship(args: argparse.Namespace, params: Params) -> None:
    import tempfile

    from colorizer.colorize.showcase import before_after
    from colorizer.training.checkpoints import PRETRAINED_DIR, ship_generator

    out = args.out or PRETRAINED_DIR
    info = ship_generator(args.model, out)
    with tempfile.TemporaryDirectory() as work:
        rows = before_after(args.fetched, out, out / "before_after.jpg", Path(work))
    print(json.dumps({"model_sha256": info["model_sha256"], "before_after_rows": rows}))


@command("completion", 'Print a shell completion script: eval "$(colorizer completion bash)".', needs_params=False)
def _completion_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("shell", choices=["bash", "zsh", "tcsh"], help="the shell to complete in")
    parser.set_defaults(run=_run_completion)


def _run_completion(args: argparse.Namespace, params: Params) -> None:
    import shtab  # what dvc's own `dvc completion` uses

    print(shtab.complete(build_parser(), shell=args.shell))


def build_parser() -> argparse.ArgumentParser:
    from colorizer import __version__

    parser = argparse.ArgumentParser(prog="colorizer", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"colorizer {__version__}")
    # -v/-q before the command too (`colorizer -q colorize ...`), as after it
    parser.add_argument("-v", "--verbose", action="count", default=0, dest="verbose_before", help=argparse.SUPPRESS)
    parser.add_argument("-q", "--quiet", action="count", default=0, dest="quiet_before", help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_arguments, needs_params) in COMMANDS.items():
        child = sub.add_parser(name, help=help_text, description=help_text)
        if needs_params:
            child.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
        child.add_argument("-v", "--verbose", action="count", default=0, help="debug detail on stderr")
        child.add_argument("-q", "--quiet", action="count", default=0, help="warnings and errors only, no progress")
        add_arguments(child)
    return parser


def main(argv: list[str] | None = None) -> int:
    setup_process()  # before any command imports torch
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose + args.verbose_before - args.quiet - args.quiet_before)

    def work() -> int | None:
        from colorizer.config import Params, load_params

        params = load_params(args.params) if getattr(args, "params", None) else Params()
        return args.run(args, params)

    code = run_entry(args.command, work)
    leave_blocked_threads(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
