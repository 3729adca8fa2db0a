"""`tagger` console script: one entry point, subcommands resolved lazily.

Lazy imports keep `tagger worker` and `tagger predict` free of torch: only the exporter
subcommands import the `exporter` package, and the worker image does not ship it.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# subcommand -> (module, help). Each module defines add_arguments(parser) and run(args) -> int.
COMMANDS: dict[str, tuple[str, str]] = {
    "split": ("exporter.data", "split a labelled JSONL file into train/test (identical titles never straddle)"),
    "train": ("exporter.train", "fine-tune a pretrained encoder into a multi-label tagger"),
    "export": ("exporter.export", "export a trained run to a validated ONNX model artifact"),
    "evaluate": ("exporter.evaluate", "P/R/F1 of a model artifact (and a TF-IDF baseline)"),
    "import-base": ("exporter.import_base", "import a packaged base model into a local HF directory"),
    "predict": ("worker.predict", "offline batch tagging of a JSONL file with ONNX Runtime"),
    "worker": ("worker.main", "run the streaming Kafka worker"),
    "compare": ("worker.compare", "agreement of a shadow model's tag events with the live ones (two topics)"),
    "feedback": (
        "worker.feedback_export",
        "reviewers' decisions (feedback topic) -> training rows (`feedback export`)",
    ),
    "review": (
        "worker.review_page.main",
        "the review page: items of the review topic, decisions published as feedback",
    ),
}


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """Only the selected subcommand's module is imported (torch stays out of `tagger worker`)."""
    parser = argparse.ArgumentParser(prog="tagger", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name != selected:
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            # e.g. `tagger train` in the worker image, which carries no torch.
            p.set_defaults(_missing=f"`tagger {name}` is unavailable here: {exc}")
            continue
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    selected = next((a for a in argv if a in COMMANDS), None)
    parser = build_parser(selected)
    args = parser.parse_args(argv)
    if getattr(args, "_missing", None):
        print(args._missing, file=sys.stderr)
        return 2
    if not logging.getLogger().handlers:
        logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
