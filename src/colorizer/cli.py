"""The `colorizer` command: every pipeline stage by hand, plus bulk colorization.

Each subcommand loads params.yaml through the typed config, then calls one library function.
User mistakes (bad params, missing inputs) end with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from colorizer.config import Params, UserError, load_params

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None]]] = {}


def command(name: str, help_text: str):
    def register(add_arguments):
        COMMANDS[name] = (help_text, add_arguments)
        return add_arguments

    return register


@command("fetch", "Gather photos from params' sources into accepted sRGB images and a manifest.")
def _fetch_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=Path("data"), help="the user's photo folder (default: data)")
    parser.add_argument("--out", type=Path, default=Path("work/fetch"), help="output folder")
    parser.add_argument("--cache", type=Path, default=Path(".cache/downloads"), help="download cache folder")
    parser.add_argument("--summary", type=Path, default=Path("metrics/fetch.json"), help="summary JSON (DVC metrics)")
    parser.set_defaults(run=_run_fetch)


def _run_fetch(args: argparse.Namespace, params: Params) -> None:
    from colorizer.fetch import fetch

    summary = fetch(params.fetch, args.data, args.out, args.cache, args.summary)
    print(json.dumps(summary))


@command("augment", "Make fixed-size training variants and val/test crops from the fetched photos.")
def _augment_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fetched", type=Path, default=Path("work/fetch"))
    parser.add_argument("--out", type=Path, default=Path("work/augment"))
    parser.set_defaults(run=_run_augment)


def _run_augment(args: argparse.Namespace, params: Params) -> None:
    from colorizer.augment import augment

    print(json.dumps(augment(params.augment, params.seed, args.fetched, args.out)))


@command("shard", "Convert the augmented packs to memory-mappable CIE Lab shards.")
def _shard_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--augmented", type=Path, default=Path("work/augment"))
    parser.add_argument("--out", type=Path, default=Path("work/shards"))
    parser.set_defaults(run=_run_shard)


def _run_shard(args: argparse.Namespace, params: Params) -> None:
    from colorizer.shards import write_shards

    index = write_shards(args.augmented, args.out, params.shard.images_per_shard)
    print(json.dumps({split: info["count"] for split, info in index["splits"].items()}))


@command("train", "Train the GAN on the Lab shards (resumes from the last checkpoint) and export the generator.")
def _train_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shards", type=Path, default=Path("work/shards"))
    parser.add_argument("--model", type=Path, default=Path("work/model"), help="where the generator is exported")
    parser.add_argument("--state", type=Path, default=Path("work/train"), help="checkpoint and sample grids")
    parser.add_argument("--plots", type=Path, default=Path("plots/train.csv"), help="per-epoch losses (DVC plots)")
    parser.add_argument("--metrics", type=Path, default=Path("metrics/train.json"))
    parser.set_defaults(run=_run_train)


def _run_train(args: argparse.Namespace, params: Params) -> None:
    from colorizer.train import train

    final = train(params, args.shards, args.model, args.state, args.plots, args.metrics)
    print(json.dumps(final))


@command("evaluate", "Score the trained generator and the greyscale baseline on val and test.")
def _evaluate_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, default=Path("work/model"))
    parser.add_argument("--shards", type=Path, default=Path("work/shards"))
    parser.add_argument("--metrics", type=Path, default=Path("metrics/evaluate.json"))
    parser.add_argument("--per-image", type=Path, default=Path("work/evaluate/per_image.csv"))
    parser.set_defaults(run=_run_evaluate)


def _run_evaluate(args: argparse.Namespace, params: Params) -> None:
    from colorizer.evaluate import evaluate

    summary = evaluate(
        args.model,
        args.shards,
        args.metrics,
        args.per_image,
        params.evaluate.batch_size,
        params.train.l1_lambda,
        params.evaluate.device,
    )
    print(json.dumps(summary))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="colorizer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_arguments) in COMMANDS.items():
        child = sub.add_parser(name, help=help_text, description=help_text)
        child.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file")
        add_arguments(child)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        params = load_params(args.params) if args.params else Params()
        args.run(args, params)
    except (UserError, FileNotFoundError) as e:
        print(f"colorizer {args.command}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"colorizer {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
