"""`make quality`: the default recipe against the TF-IDF baseline on every dataset, honestly split.

For each `*.jsonl` in the data directory it runs the commands a new user runs, as subprocesses
(`tagger split` grouped by title, `tagger train` with its defaults, `tagger export --int8`), then
scores the exported artifact fp32 and int8 with the serving engine and the TF-IDF + logistic
regression baseline trained on the same split. Prints one table per dataset and, last, one JSON line:
`{"datasets": {NAME: {"ours_micro_f1", "baseline_micro_f1", "ours_int8_micro_f1", "train_s", ...}}}`.

`--quick` is a smoke run for CI: a few hundred rows per dataset and a few training steps; its
numbers mean nothing beyond "the suite runs end to end".
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from exporter.baseline import TfidfBaseline
from exporter.evaluate import evaluate_model
from exporter.metrics import report
from schemas.training import load_rows
from worker.contract import compose_text

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"


def tagger(log_dir: Path, *argv: str) -> float:
    """Run one `tagger` subcommand as a user would (its output goes to `log_dir/COMMAND.log`, where
    progress can be followed); returns its wall time. Fails loudly."""
    started = time.monotonic()
    cmd = [sys.executable, "-m", "worker.cli", *argv]
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{argv[0]}.log"
    print(f"$ tagger {' '.join(argv)}    (log: {log_path})", flush=True)
    with log_path.open("w") as log_file:
        proc = subprocess.run(cmd, cwd=ROOT, text=True, stdout=log_file, stderr=subprocess.STDOUT)
    lines = log_path.read_text().strip().splitlines()
    if proc.returncode != 0:
        raise SystemExit(f"`tagger {argv[0]}` failed ({proc.returncode}):\n" + "\n".join(lines[-40:]))
    print("  " + "\n  ".join(line for line in lines if line.startswith("{"))[-2000:], flush=True)
    return time.monotonic() - started


def f1s(result: dict[str, Any]) -> tuple[float, dict[str, float]]:
    return float(result["micro"]["f1"]), {k: float(v["f1"]) for k, v in result["per_facet"].items()}


def baseline_report(data: Path, out: Path) -> tuple[dict[str, Any], float]:
    """The TF-IDF + LR baseline trained on the split's train part, scored on its test part. Its
    result depends only on those two files, so it is kept under `out/baselines/` by their content
    hash and reused (on Flipkart the one-vs-rest fit takes longer than our own training)."""
    digest = hashlib.sha256((data / "train.jsonl").read_bytes() + (data / "test.jsonl").read_bytes()).hexdigest()
    cached = out / "baselines" / f"{digest[:16]}.json"
    if cached.is_file():
        saved = json.loads(cached.read_text())
        return saved["report"], float(saved["fit_s"])
    started = time.monotonic()
    test = load_rows(data / "test.jsonl").rows
    baseline = TfidfBaseline().fit(load_rows(data / "train.jsonl").rows)
    result = report([r.tags for r in test], baseline.predict([compose_text(r.title, r.description) for r in test]))
    fit_s = time.monotonic() - started
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps({"report": result, "fit_s": round(fit_s, 1)}, ensure_ascii=False))
    return result, fit_s


@dataclass(frozen=True)
class DatasetResult:
    ours_micro_f1: float
    baseline_micro_f1: float
    ours_int8_micro_f1: float
    train_s: float
    baseline_fit_s: float
    test_items: int
    worst_facet_gap: float  # ours minus baseline, on the facet where ours trails most


def run_dataset(path: Path, out: Path, args: argparse.Namespace) -> DatasetResult:
    name = path.stem
    data, run, model = out / name / "data", out / name / "run", out / name / "model"
    source = path
    if args.quick:  # a small random slice, so the smoke run stays short
        rows = path.read_text().splitlines()
        random.Random(0).shuffle(rows)
        source = out / name / "quick.jsonl"
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_text("\n".join(rows[:400]) + "\n")
    logs = out / name / "logs"
    tagger(logs, "split", "--data", str(source), "--out", str(data))
    train_argv = ["train", "--data", str(data / "train.jsonl"), "--out", str(run)]
    if args.quick:
        train_argv += ["--max-steps", "6", "--max-seq-len", "32"]
    elif args.max_minutes:
        train_argv += ["--max-minutes", str(args.max_minutes)]
    train_s = tagger(logs, *train_argv)
    tagger(logs, "export", "--checkpoint", str(run), "--out", str(model), "--int8")

    test = load_rows(data / "test.jsonl").rows
    ours = evaluate_model(model, test)
    ours8 = evaluate_model(model, test, int8=True)
    base, baseline_s = baseline_report(data, out)
    (out / name / "report.json").write_text(
        json.dumps({"ours": ours, "ours_int8": ours8, "baseline": base}, indent=2, ensure_ascii=False) + "\n"
    )
    o, o_f = f1s(ours)
    o8, _ = f1s(ours8)
    b, b_f = f1s(base)
    meta = json.loads((run / "tagger.json").read_text())
    print(f"\n{name}: {len(test)} test items, base model {meta['base_model']}, train {train_s / 60:.1f} min")
    print(f"{'':24} {'ours fp32':>10} {'ours int8':>10} {'TF-IDF+LR':>10} {'diff':>7}")
    print(f"{'micro-F1':24} {o:>10.4f} {o8:>10.4f} {b:>10.4f} {o - b:>+7.4f}")
    for facet in sorted(set(o_f) | set(b_f)):
        ov, bv = o_f.get(facet, 0.0), b_f.get(facet, 0.0)
        print(f"{'  ' + facet:24} {ov:>10.4f} {'':>10} {bv:>10.4f} {ov - bv:>+7.4f}")
    print(f"validation ablation (micro-F1): {json.dumps(meta.get('ablation', {}))}\n", flush=True)
    return DatasetResult(
        ours_micro_f1=o,
        baseline_micro_f1=b,
        ours_int8_micro_f1=o8,
        train_s=round(train_s, 1),
        baseline_fit_s=round(baseline_s, 1),
        test_items=len(test),
        worst_facet_gap=round(min((o_f.get(f, 0.0) - b_f[f] for f in b_f), default=0.0), 4),
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m exporter.quality", description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help=f"datasets (*.jsonl; default {DEFAULT_DATA})")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "quality", help="work directory")
    p.add_argument("--only", action="append", help="dataset name (file stem) to run; repeatable")
    p.add_argument("--quick", action="store_true", help="smoke run: 400 rows and 6 steps per dataset")
    p.add_argument("--max-minutes", type=float, default=None, help="training budget (default: train's own)")
    args = p.parse_args(argv)
    paths = sorted(args.data_dir.glob("*.jsonl"))
    if args.only:
        paths = [x for x in paths if x.stem in args.only]
    if not paths:
        raise SystemExit(f"no datasets (*.jsonl) in {args.data_dir}")
    results = {x.stem: run_dataset(x, args.out / ("quick" if args.quick else "full"), args) for x in paths}
    print(f"{'dataset':24} {'ours':>7} {'int8':>7} {'base':>7} {'diff':>7} {'worst facet':>12} {'train min':>10}")
    for name, r in results.items():
        print(
            f"{name:24} {r.ours_micro_f1:>7.4f} {r.ours_int8_micro_f1:>7.4f} {r.baseline_micro_f1:>7.4f} "
            f"{r.ours_micro_f1 - r.baseline_micro_f1:>+7.4f} {r.worst_facet_gap:>+12.4f} {r.train_s / 60:>10.1f}"
        )
    print(json.dumps({"datasets": {name: asdict(r) for name, r in results.items()}}, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
