"""The ``spai-svd`` command: convert, make-csv, train, test, infer, adapters, push.

``convert``, ``make-csv`` and ``train`` forward their arguments untouched to the library entry points (so their
``--help`` is the library's own). Heavy imports (torch, transformers) happen inside the subcommands, which keeps
``spai-svd --help`` and ``spai-svd adapters list`` fast.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
from collections.abc import Callable, Sequence

__all__ = ["build_parser", "main"]

FORWARDED: dict[str, tuple[str, str]] = {
    "convert": ("spai_hf.convert_spai_checkpoint", "convert an original spai.pth checkpoint to a transformers folder"),
    "make-csv": ("spai_hf.make_csv", "build a train/val/test CSV from folders of real and generated images"),
    "train": ("spai_hf.training", "train an SVD residual adapter (use `accelerate launch -m spai_hf.training` "
              "for several processes)"),
    "make-demo-data": ("spai_hf.demo_data", "build the offline real-vs-synthetic demo dataset from bundled photos"),
    "demo": ("spai_hf.demo", "run the offline end-to-end demo (data, base, adapters, AUC table)"),
}


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by `test` and `infer`: the model, the device and memory knobs, image limits."""
    parser.add_argument("--base", required=True, help="base SPAI model: a local folder or a Hub repository id")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default: 8)")
    parser.add_argument(
        "--max-patches-per-forward",
        type=int,
        default=None,
        help="bound on backbone rows per call, to cap memory on large images (default: the model config's)",
    )
    parser.add_argument("--num-workers", type=int, default=2, help="image-decoding worker processes (default: 2)")
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        help="refuse images with more pixels than this as decompression bombs (default: 256 Mpx)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_registry_option(parser)


def _add_registry_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--registry",
        default=None,
        help="adapter registry file (default: $SPAI_SVD_REGISTRY, else adapters/registry.json)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (forwarded subcommands appear in the listing; their options are their own)."""
    parser = argparse.ArgumentParser(
        prog="spai-svd",
        description="AI-generated image detection with SPAI and per-generator SVD residual adapters.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, help_text) in FORWARDED.items():
        commands.add_parser(name, help=help_text, add_help=False)

    test = commands.add_parser(
        "test",
        help="evaluate the base model or an adapter on a labelled CSV",
        description="Score the images of a labelled CSV, print metrics per split (and per generator when the "
        "CSV has a `generator` column), and write predictions.csv and metrics.json to --output.",
    )
    _add_model_options(test)
    test.add_argument("--adapter", default=None, help="adapter: registered name, folder or Hub id (default: base)")
    test.add_argument("--data", required=True, help="CSV with columns image, split, class (and optional generator)")
    test.add_argument("--csv-root", default=None, help="folder that relative image paths start from (default: CSV's)")
    test.add_argument(
        "--split", action="append", default=None, help="split(s) to evaluate, repeatable; 'all' for every split "
        "(default: test)"
    )
    test.add_argument("--output", default="runs/test", help="folder for predictions.csv and metrics.json")
    test.add_argument(
        "--threshold", type=float, default=None, help="decision threshold (default: the adapter's calibrated one)"
    )

    infer = commands.add_parser(
        "infer",
        help="score images under the base model and any number of adapters",
        description="Score images at their native resolution. Writes one CSV row per image: path, width, height, "
        "score_base, score_<adapter> and verdict_<adapter> (when the adapter has a calibrated threshold) per "
        "adapter, and error (empty on success). Unreadable images get an error and never stop the run.",
    )
    _add_model_options(infer)
    infer.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="NAME_OR_PATH",
        help="adapter: registered name, folder or Hub id; repeat the flag for several (all score each batch "
        "together)",
    )
    infer.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (recursive), globs or CSVs")
    infer.add_argument("--output", required=True, help="output CSV path (written atomically at the end)")
    infer.add_argument("--csv-root", default=None, help="folder that relative paths in input CSVs start from")
    infer.add_argument("--heatmaps", default=None, metavar="DIR", help="write attention overlay + mask PNGs here")

    adapters = commands.add_parser("adapters", help="list, add or remove named adapters in the registry")
    actions = adapters.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="show the registered adapters")
    listing.add_argument("--json", action="store_true", help="print the registry entries as JSON")
    _add_registry_option(listing)
    add = actions.add_parser("add", help="register an adapter folder or Hub repository under a short name")
    add.add_argument("name", help="short name, e.g. sdxl")
    add.add_argument("source", metavar="PATH_OR_HUB_ID", help="adapter folder or Hub repository id (namespace/name)")
    add.add_argument("--revision", default=None, help="Hub branch, tag or commit to pin (default: main)")
    add.add_argument("--force", action="store_true", help="replace an existing entry with the same name")
    _add_registry_option(add)
    remove = actions.add_parser("remove", help="unregister an adapter (its files are kept)")
    remove.add_argument("name")
    _add_registry_option(remove)

    push = commands.add_parser(
        "push",
        help="write a model card for an adapter folder and upload it to the Hugging Face Hub",
        description="Write README.md (model card) into ADAPTER_DIR, then create the Hub repository and upload "
        "the folder. With --dry-run, only the card is written and the files that would be uploaded are listed.",
    )
    push.add_argument("adapter_dir", metavar="ADAPTER_DIR")
    push.add_argument("--repo-id", required=True, help="target Hub repository, namespace/name")
    push.add_argument("--private", action="store_true", help="create the repository as private")
    push.add_argument("--dry-run", action="store_true", help="write the card and list files; upload nothing")
    push.add_argument(
        "--base-model", default=None, help="Hub id of the base model (default: the one recorded in the adapter)"
    )
    return parser


def _run_forwarded(name: str, argv: list[str]) -> int:
    """Hand ``argv`` to the library's ``main(argv[, prog])``, naming the program ``spai-svd NAME`` in its usage."""
    module_name, _ = FORWARDED[name]
    entry: Callable[..., int | None] = importlib.import_module(module_name).main
    if "prog" in inspect.signature(entry).parameters:
        return int(entry(argv, prog=f"spai-svd {name}") or 0)
    return int(entry(argv) or 0)


def _cmd_adapters(args: argparse.Namespace) -> int:
    from .registry import AdapterRegistry

    registry = AdapterRegistry(args.registry)
    if args.action == "add":
        entry = registry.add(args.name, args.source, force=args.force, revision=args.revision)
        print(f"registered {args.name!r} -> {entry.source} ({entry.kind}) in {registry.path}")
    elif args.action == "remove":
        entry = registry.remove(args.name)
        print(f"removed {args.name!r} ({entry.source}) from {registry.path}; its files were left in place")
    else:
        entries = registry.entries()
        if args.json:
            print(json.dumps({name: vars(entry) for name, entry in entries.items()}, indent=2, sort_keys=True))
        elif not entries:
            print(f"no adapters registered in {registry.path}")
        else:
            _print_table(
                ["name", "generator", "threshold", "roc_auc", "kind", "source"],
                [
                    [
                        name,
                        entry.generator or "-",
                        "-" if entry.threshold is None else f"{entry.threshold:.4f}",
                        f"{entry.metrics['roc_auc']:.4f}" if "roc_auc" in entry.metrics else "-",
                        entry.kind,
                        entry.source,
                    ]
                    for name, entry in sorted(entries.items())
                ],
            )
    return 0


def _cmd_push(args: argparse.Namespace) -> int:
    from .hub import push_adapter

    result = push_adapter(
        args.adapter_dir,
        args.repo_id,
        private=args.private,
        dry_run=args.dry_run,
        base_model=args.base_model,
    )
    print(f"model card written to {result.card_path}")
    verb = "would upload" if args.dry_run else "uploaded"
    print(f"{verb} {len(result.files)} file(s) to {args.repo_id}:")
    for name in result.files:
        print(f"  {name}")
    if result.url:
        print(f"done: {result.url}")
    return 0


def _load_scorer(args: argparse.Namespace, adapter_refs: Sequence[str], include_base: bool):
    """Resolve ``adapter_refs`` through the registry and load them with the base model onto the device."""
    from .inference import MultiAdapterScorer
    from .registry import AdapterRegistry

    registry = AdapterRegistry(args.registry)
    adapters = [registry.resolve(ref) for ref in adapter_refs]
    return MultiAdapterScorer.from_pretrained(
        args.base,
        adapters,
        include_base=include_base,
        device=args.device,
        max_patches_per_forward=args.max_patches_per_forward,
    )


def _score(args: argparse.Namespace, scorer, paths, heatmaps: str | None = None):
    from .inference import score_images

    return score_images(
        paths,
        scorer,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        max_pixels=args.max_pixels,
        heatmap_dir=heatmaps,
        progress=not args.no_progress,
    )


def _report_failures(results, limit: int = 20) -> None:
    """Summary of unreadable / unscorable images on stderr."""
    failed = [result for result in results if result.error]
    print(f"scored {len(results) - len(failed)} of {len(results)} image(s); {len(failed)} failed", file=sys.stderr)
    for result in failed[:limit]:
        print(f"  {result.path}: {result.error}", file=sys.stderr)
    if len(failed) > limit:
        print(f"  ... and {len(failed) - limit} more (see the error column)", file=sys.stderr)


def _cmd_infer(args: argparse.Namespace) -> int:
    from .inference import collect_inputs, write_predictions

    paths = collect_inputs(args.inputs, args.csv_root)
    if not paths:
        raise ValueError("the inputs name no image")
    scorer = _load_scorer(args, args.adapter, include_base=True)
    results = _score(args, scorer, paths, args.heatmaps)
    write_predictions(args.output, results, scorer.columns)
    print(f"wrote {len(results)} row(s) to {args.output}", file=sys.stderr)
    _report_failures(results)
    return 0


def _cmd_test(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .evaluation import DEFAULT_THRESHOLD, TABLE_METRICS, group_metrics, load_labelled, write_test_outputs

    splits = None if args.split and "all" in args.split else (args.split or ["test"])
    rows = load_labelled(args.data, splits, args.csv_root)
    scorer = _load_scorer(args, [args.adapter] if args.adapter else [], include_base=args.adapter is None)
    column = scorer.columns[0]
    threshold = next(t for t in (args.threshold, column.threshold, DEFAULT_THRESHOLD) if t is not None)
    unique = list(dict.fromkeys(Path(row.path) for row in rows))  # an image listed in several splits is scored once
    by_path = dict(zip(unique, _score(args, scorer, unique)))
    results = [by_path[Path(row.path)] for row in rows]
    report = group_metrics(rows, results, column.name, threshold)
    model = {"base": args.base, "adapter": args.adapter, "column": column.name}
    predictions, metrics = write_test_outputs(args.output, rows, results, column.name, threshold, report, model)
    print(f"model: {args.adapter or 'base'} on {args.base}; threshold {threshold:.4f}")
    _print_table(
        ["split", "generator", "n", "failed", *TABLE_METRICS],
        [
            [
                entry["split"],
                entry["generator"] or "(all)",
                str(entry["metrics"]["num_samples"] if entry["metrics"] else 0),
                str(entry["num_failed"]),
                *(_fmt(entry["metrics"][name]) if entry["metrics"] else "-" for name in TABLE_METRICS),
            ]
            for entry in report
        ],
    )
    print(f"predictions: {predictions}\nmetrics: {metrics}")
    _report_failures(results)
    return 0


def _fmt(value: float) -> str:
    return "-" if value != value else f"{value:.4f}"  # NaN (undefined metric) shows as "-"


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print an aligned plain-text table."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    for line in [header, ["-" * width for width in widths], *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)).rstrip())


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "adapters": _cmd_adapters,
    "push": _cmd_push,
    "infer": _cmd_infer,
    "test": _cmd_test,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``spai-svd`` with ``argv`` (default: the process arguments); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in FORWARDED:
        return _run_forwarded(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (OSError, ValueError) as error:
        print(f"spai-svd {args.command}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
