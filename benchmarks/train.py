"""Training benchmark: SGD, Adam, AdamW, SWA, Lookahead, PSO and HG-PSO on Fashion-MNIST, SVHN,
Tiny ImageNet and digits.

Usage (see docs/guides/benchmarks.md)::

    hgpso-train --dataset fashion-mnist --optimizers sgd adam pso hgpso --seeds 0 1 2 \
        --epochs 2 --out runs/fashion-mnist

Every (optimizer, seed) run trains a fresh model built under ``torch.manual_seed(seed)`` (the
same initial weights for every optimizer) on batches drawn in a seed-determined order (the same
for every optimizer), through a Lightning ``Trainer``. Each finished run is written to
``OUT/runs/<optimizer>-seed<seed>.json`` at once (``...-noise<p>-noiseseed<s>.json`` for a
``--label-noise`` run, so clean and noisy runs never overwrite each other) and the aggregate
files (summary.json, runs.csv, report.md, figures/) are refreshed; rerunning the same command
skips runs whose JSON exists with the same configuration.

Optimizers: those of ``benchmarks.registry.OPTIMIZER_SPECS`` - ``sgd``, ``adam``, ``adamw``,
``swa`` (SGD with ``torch.optim.swa_utils`` over the last quarter of the run, evaluated on the
averaged model), ``lookahead`` (k=5, alpha=0.5 around Adam), ``pso``, ``hgpso`` (HG-PSO with the
tuned settings), ``hgpso-default`` (HG-PSO with ``hgpso.HGPSO``'s own defaults, 4 particles like
the tuned entry) and ``hgpso-adam`` (the same with ``gradient="adam"`` at Adam's rate).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import platform
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from benchmarks import cli_types as cli
from benchmarks.atomic import write_json
from benchmarks.datasets import DatasetError
from benchmarks.metrics import machine_load
from benchmarks.registry import (
    DATASET_SPECS,
    DATASETS,
    DEFAULT_HPARAMS,
    HPARAM_TYPES,
    MODEL_VARIANTS,
    OPTIMIZERS,
    data_module,
    recorded_hparams,
)


def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(
        prog="hgpso-train",
        description="Train the same model with SGD, Adam, AdamW, SWA, Lookahead, PSO and HG-PSO "
        "and compare them "
        "(steps to a loss threshold, test accuracy, final loss, compute, memory).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--dataset", choices=DATASETS, default="fashion-mnist")
    p.add_argument("--optimizers", nargs="+", choices=OPTIMIZERS, default=list(OPTIMIZERS))
    p.add_argument("--seeds", nargs="+", type=cli.seed, default=[0, 1, 2])
    p.add_argument(
        "--epochs",
        type=cli.positive_float,
        default=2,
        help="epochs per run (fractions allowed: 0.5 = half an epoch)",
    )
    p.add_argument("--batch-size", type=cli.positive_int, default=128)
    p.add_argument("--device", type=cli.device, default="cpu", help="cpu, cuda, cuda:1, mps")
    p.add_argument(
        "--data-root",
        default=None,
        help="directory holding the data set files (see docs/guides/benchmarks.md, Data)",
    )
    p.add_argument(
        "--no-download",
        action="store_true",
        help="never try torchvision's download (Fashion-MNIST/SVHN)",
    )
    p.add_argument(
        "--out",
        type=cli.writable_dir,
        default=None,
        help="output directory (default: runs/<dataset>)",
    )
    p.add_argument(
        "--threshold",
        type=cli.positive_float,
        default=None,
        help="training-loss threshold for steps-to-threshold (default per dataset: "
        + ", ".join(f"{k} {v.threshold}" for k, v in DATASET_SPECS.items())
        + ")",
    )
    p.add_argument(
        "--window",
        type=cli.positive_int,
        default=None,
        help="trailing window (steps) of the loss mean compared with the threshold "
        "(default: 1/20 of an epoch, at least 1)",
    )
    p.add_argument(
        "--evals-per-epoch",
        type=cli.positive_float,
        default=4,
        help="evaluations of the accuracy per epoch (the accuracy-vs-compute curve)",
    )
    p.add_argument(
        "--final-loss-examples",
        type=cli.nonneg_int,
        default=10000,
        help="the final training loss is measured on this many training examples "
        "(a fixed subset; 0 = the whole training split)",
    )
    p.add_argument(
        "--holdout",
        type=cli.fraction,
        default=0.0,
        help="evaluate on this fraction held out of the training set instead of the "
        "test set (for tuning)",
    )
    p.add_argument(
        "--train-subset",
        type=cli.positive_int,
        default=None,
        help="use only this many training examples (quick runs)",
    )
    p.add_argument(
        "--label-noise",
        type=cli.fraction,
        default=0.0,
        metavar="P",
        help="symmetric label noise on the training set only (the evaluation set stays "
        "clean): exactly round(P*n) training labels, chosen at random, are replaced by a label "
        "drawn uniformly from the other classes (0 = clean labels)",
    )
    p.add_argument(
        "--label-noise-seed",
        type=cli.seed,
        default=0,
        help="seed of the label corruption, independent of --seeds: every optimizer and "
        "every training seed sees the same corrupted labels",
    )
    p.add_argument(
        "--model",
        choices=MODEL_VARIANTS,
        default=None,
        help="another model for the data set (fashion-mnist: cnn-bn = the CNN with BatchNorm, "
        "mlp = a 784-128-128 MLP; default: the data set's own model)",
    )
    p.add_argument(
        "--norm",
        choices=("group", "batch"),
        default="group",
        help="normalisation layers of the Tiny ImageNet ResNet-18",
    )
    p.add_argument(
        "--chunk-size",
        type=cli.positive_int,
        default=None,
        help="particles per vmap chunk of the vectorized swarm closure",
    )
    p.add_argument("--threads", type=cli.positive_int, default=None, help="torch.set_num_threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    p.add_argument("--force", action="store_true", help="rerun finished runs")
    p.add_argument(
        "--include-finished",
        action="store_true",
        help="also put into the report every other finished run in OUT/runs made with the "
        "same settings (any optimizer, any seed), without running anything more: e.g. one "
        "PSO seed beside three seeds of the others",
    )
    p.add_argument("--notes", default=None, help="text appended to report.md")
    for opt, hps in DEFAULT_HPARAMS.items():
        g = p.add_argument_group(f"{opt} hyperparameters")
        for key, default in hps.items():
            g.add_argument(
                f"--{opt}-{key.replace('_', '-')}",
                dest=f"{opt}__{key}",
                type=HPARAM_TYPES[key],
                default=default,
                metavar=key.upper(),
            )
    return p


def hparams_from_args(args: argparse.Namespace, optimizer: str) -> dict[str, Any]:
    return {k: getattr(args, f"{optimizer}__{k}") for k in DEFAULT_HPARAMS[optimizer]}


def set_hparam(args: argparse.Namespace, optimizer: str, key: str, value: Any) -> None:
    """Set ``optimizer``'s hyperparameter ``key`` in parsed ``args`` (as ``--<opt>-<key>``)."""
    if key not in DEFAULT_HPARAMS[optimizer]:
        raise KeyError(f"{optimizer} has no hyperparameter {key!r}")
    setattr(args, f"{optimizer}__{key}", value)


def run_config(args: argparse.Namespace, optimizer: str, seed: int) -> dict[str, Any]:
    """Everything that determines a run's result (a finished run with another config reruns)."""
    config: dict[str, Any] = {
        "dataset": args.dataset,
        "optimizer": optimizer,
        "seed": seed,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "holdout": args.holdout,
        "train_subset": args.train_subset,
        "threshold": args.threshold,
        "window": args.window,
        "evals_per_epoch": args.evals_per_epoch,
        "final_loss_examples": args.final_loss_examples,
        "norm": args.norm if args.dataset == "tiny-imagenet" else None,
        "device": args.device,
        "hparams": recorded_hparams(optimizer, hparams_from_args(args, optimizer)),
    }
    if args.model is not None:  # absent for the data set's own model (configs stay the same)
        config["model"] = args.model
    if args.label_noise > 0:  # absent for clean runs: their configs stay as they always were
        config["label_noise"] = {
            "kind": "symmetric",
            "fraction": args.label_noise,
            "seed": args.label_noise_seed,
        }
    return config


def run_key(args: argparse.Namespace, optimizer: str, seed: int) -> str:
    """File stem of a run: ``<optimizer>-seed<seed>``, plus the noise for a noisy run."""
    key = f"{optimizer}-seed{seed}"
    if args.label_noise > 0:
        key += f"-noise{args.label_noise:g}-noiseseed{args.label_noise_seed}"
    return key


def _hardware(device: str) -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} logical CPUs visible, torch threads {torch.get_num_threads()}"
    if device.startswith("cuda") and torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(torch.device(device))}"
    return text + f"; device {device}"


def _software() -> str:
    import lightning
    import torch

    import hgpso

    return (
        f"Python {platform.python_version()}, torch {torch.__version__}, lightning "
        f"{lightning.__version__}, hgpso {hgpso.__version__}"
    )


def _labels_sha256(labels) -> str:
    import numpy as np

    return hashlib.sha256(labels.numpy().astype(np.int64).tobytes()).hexdigest()


def label_noise_info(dm) -> dict[str, Any] | None:
    """What the corruption of ``dm``'s training labels was (``None`` for clean labels)."""
    if not getattr(dm, "label_noise", 0):
        return None
    mask = dm.train_noise_mask
    return {
        "kind": "symmetric",
        "fraction": dm.label_noise,
        "seed": dm.label_noise_seed,
        "corrupted": int(mask.sum()),
        "train_size": len(mask),
        "noisy_labels_sha256": _labels_sha256(dm.train_set.y),
    }


def noise_fit(module, dm, max_examples: int | None) -> dict[str, Any]:
    """How the final weights fit the corrupted training labels, on the final-loss subset.

    ``accuracy_noisy_labels``/``accuracy_clean_labels``: agreement with the labels trained on
    and with the true labels; on the corrupted examples only, ``memorized`` = the prediction is
    the wrong label the model was taught, ``corrected`` = it is the true label.
    """
    import torch

    idx = dm.train_eval_indices(max_examples)
    noisy_y, clean_y = dm.train_set.y[idx], dm.train_clean_y[idx]
    mask = dm.train_noise_mask[idx]
    preds = []
    was_training = module.model.training
    model = module.evaluated_model().eval()
    with torch.no_grad():
        for chunk in idx.split(dm.eval_batch_size):
            x, _ = dm.train_set._batch(chunk)
            preds.append(model(x.to(module.device)).argmax(dim=1).cpu())
    module.model.train(was_training)
    pred = torch.cat(preds)
    n_bad = int(mask.sum())
    return {
        "examples": len(idx),
        "corrupted_examples": n_bad,
        "accuracy_noisy_labels": float((pred == noisy_y).float().mean()),
        "accuracy_clean_labels": float((pred == clean_y).float().mean()),
        "memorized": float((pred[mask] == noisy_y[mask]).float().mean()) if n_bad else None,
        "corrected": float((pred[mask] == clean_y[mask]).float().mean()) if n_bad else None,
    }


def train_one(
    args: argparse.Namespace, dm, optimizer: str, seed: int, config: dict[str, Any]
) -> dict[str, Any]:
    """One run through a Lightning Trainer; returns the run record."""
    import lightning.pytorch as pl
    import torch

    from benchmarks.lit import BenchModule
    from benchmarks.metrics import PeakMemory, Stopwatch, steps_to_threshold
    from benchmarks.models import count_parameters
    from benchmarks.registry import build_model

    machine_start = machine_load()
    pl.seed_everything(seed, workers=True, verbose=False)
    torch.manual_seed(seed)
    model = build_model(
        args.dataset, dm.num_classes, dm.image_shape[0], norm=args.norm, variant=args.model
    )
    hparams = hparams_from_args(args, optimizer)
    dm.seed = seed
    steps_per_epoch = dm.steps_per_epoch
    max_steps = max(1, round(args.epochs * steps_per_epoch))
    module = BenchModule(
        model,
        optimizer,
        hparams,
        seed=seed,
        chunk_size=args.chunk_size,
        steps_per_epoch=steps_per_epoch,
        total_steps=max_steps,
    )
    max_epochs = -(-max_steps // steps_per_epoch)
    evals = max(1, round(args.evals_per_epoch))
    val_interval = max(1, steps_per_epoch // evals)

    accelerator, devices = "cpu", 1
    if args.device.startswith("cuda"):
        accelerator = "gpu"
        devices = [int(args.device.split(":")[1])] if ":" in args.device else 1
    elif args.device == "mps":
        accelerator = "mps"

    eval_clock = Stopwatch()

    class _EvalClock(pl.Callback):
        def on_validation_start(self, trainer, pl_module):
            eval_clock.start()

        def on_validation_end(self, trainer, pl_module):
            eval_clock.stop()

    class _StopAt(pl.Callback):  # fractional epochs; global_step is not used (manual opt.)
        def on_train_batch_end(self, trainer, pl_module, *a):
            if pl_module.steps >= max_steps:
                trainer.should_stop = True

    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=devices,
        max_epochs=max_epochs,
        limit_train_batches=min(max_steps, steps_per_epoch),
        val_check_interval=min(val_interval, max_steps),
        check_val_every_n_epoch=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=not args.no_progress,
        callbacks=[_EvalClock(), _StopAt()],
        deterministic=False,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*val_check_interval.*")
        with PeakMemory(args.device) as mem:
            t0 = time.perf_counter()
            trainer.fit(module, datamodule=dm)
            fit_seconds = time.perf_counter() - t0
            if not module.curve or module.curve[-1]["step"] != module.steps:
                trainer.validate(module, datamodule=dm, verbose=False)
            final_loss, final_train_acc = module.dataset_loss(
                dm.train_eval_dataloader(args.final_loss_examples)
            )
            total_seconds = time.perf_counter() - t0
            readouts = module.readout_scores(dm.val_dataloader())
    machine_end = machine_load()
    noise = label_noise_info(dm)
    if noise is not None:
        noise["fit"] = noise_fit(module, dm, args.final_loss_examples)

    window = args.window or max(1, steps_per_epoch // 20)
    threshold = args.threshold
    stt = steps_to_threshold(module.losses, threshold, window)
    fb = module.forward_passes + module.backward_passes
    return {
        "key": run_key(args, optimizer, seed),
        "dataset": args.dataset,
        "optimizer": optimizer,
        "seed": seed,
        "config": config,
        "hparams": config["hparams"],
        "eval_split": "holdout" if args.holdout else "test",
        "test_accuracy": module.curve[-1]["eval_accuracy"],
        "test_loss": module.curve[-1]["eval_loss"],
        # a swarm's final weights on the eval split under each readout (empty otherwise)
        "readouts": readouts,
        "final_train_loss": final_loss,
        "final_train_accuracy": final_train_acc,
        "threshold": threshold,
        "window": window,
        "steps_to_threshold": stt,
        "passes_to_threshold": None if stt is None else stt * (fb // max(1, module.steps)),
        "steps": module.steps,
        "steps_per_epoch": steps_per_epoch,
        "forward_passes": module.forward_passes,
        "backward_passes": module.backward_passes,
        "forward_backward_passes": fb,
        "eval_forward_passes": module.eval_forward_passes,
        "wall_seconds": fit_seconds - eval_clock.total,
        "step_seconds": module.train_clock.total,
        "total_seconds": total_seconds,
        "memory": mem.as_dict(),
        "stalled_at": module.stalled_at,
        "num_parameters": count_parameters(model),
        "losses": module.losses,
        "curve": module.curve,
        # how the times were taken (optional on read: older run files lack it)
        "machine": {
            "torch_threads": torch.get_num_threads(),
            "cpu_affinity_start": machine_start["cpu_affinity"],
            "cpu_affinity_end": machine_end["cpu_affinity"],
            "loadavg_1min_start": machine_start["loadavg_1min"],
            "loadavg_1min_end": machine_end["loadavg_1min"],
        },
        "label_noise": noise,
        "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


# Fields a finished run's JSON must hold to be reused (the report reads them all).
_RUN_FIELDS = (
    "key",
    "optimizer",
    "seed",
    "config",
    "test_accuracy",
    "final_train_loss",
    "steps_to_threshold",
    "wall_seconds",
    "total_seconds",
    "losses",
    "curve",
)


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _bad_fields(record: dict[str, Any]) -> list[str]:
    """Names of the fields the report computes with whose values have the wrong type."""
    bad = [
        k for k in ("test_accuracy", "wall_seconds", "total_seconds") if not _is_number(record[k])
    ]
    if not isinstance(record["losses"], list):
        bad.append("losses")
    curve = record["curve"]
    if not (
        isinstance(curve, list)
        and curve
        and all(
            isinstance(c, dict)
            and _is_number(c.get("passes"))
            and _is_number(c.get("eval_accuracy"))
            for c in curve
        )
    ):
        bad.append("curve")
    return bad


def load_finished(path: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """The finished run in ``path`` if it is intact and has ``config``, else ``None``.

    A file that is unreadable, truncated, not a JSON object or missing fields is named in
    one line and re-run (never a traceback, never silently).
    """
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        print(f"rerun: {path} is unreadable or truncated ({type(e).__name__}); running it again")
        return None
    if not isinstance(record, dict):
        kind = type(record).__name__
        print(f"rerun: {path} holds a JSON {kind}, not a run record; running it again")
        return None
    missing = [k for k in _RUN_FIELDS if k not in record]
    if missing:
        print(f"rerun: {path} lacks {', '.join(missing)}; running it again")
        return None
    bad = _bad_fields(record)
    if bad:
        print(f"rerun: {path} has wrong types in {', '.join(bad)}; running it again")
        return None
    if record.get("config") != config:
        print(f"rerun: {path} was made with other settings; running it again")
        return None
    return record


def _paths(runs_dir: Path, runs: list[dict[str, Any]]) -> set[Path]:
    return {runs_dir / f"{r['key']}.json" for r in runs}


def _other_finished_runs(
    args: argparse.Namespace, runs_dir: Path, taken: set[Path]
) -> list[dict[str, Any]]:
    """Finished runs in ``runs_dir`` outside this invocation's jobs made with the same settings
    (``--include-finished``). Files with other settings or that do not parse are named and
    left out (never re-run, never deleted)."""
    found = []
    for path in sorted(runs_dir.glob("*.json")):
        if path in taken:
            continue
        try:
            record = json.loads(path.read_text())
            o, seed = record["optimizer"], record["seed"]
        except (OSError, UnicodeDecodeError, ValueError, RecursionError, KeyError, TypeError):
            print(f"not included: {path} is not a readable run record")
            continue
        if o not in OPTIMIZERS or not isinstance(seed, int) or path.stem != run_key(args, o, seed):
            print(f"not included: {path} (another optimizer, seed or label noise)")
            continue
        missing = [k for k in _RUN_FIELDS if k not in record]
        if missing or _bad_fields(record):
            print(f"not included: {path} is incomplete")
            continue
        if record.get("config") != run_config(args, o, seed):
            print(f"not included: {path} was made with other settings")
            continue
        print(f"include {o} seed {seed}: finished run found in {path}")
        found.append(record)
    return found


def _strip_notes(argv: list[str]) -> list[str]:
    """The command line as recorded in the report, without the (long) --notes text."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--notes":
            skip = True
        elif not a.startswith("--notes="):
            out.append(a)
    return out


def _quiet_lightning() -> None:
    import logging

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")


def prepare(args: argparse.Namespace):
    """Quiet Lightning, set the thread count, load the data (``DatasetError`` if it is
    missing) and fill the threshold and window that default per data set; returns the data
    module every run of the invocation shares."""
    import torch

    _quiet_lightning()
    if args.model is not None and args.model not in DATASET_SPECS[args.dataset].variants:
        known = ", ".join(DATASET_SPECS[args.dataset].variants) or "none"
        raise DatasetError(f"--model {args.model}: {args.dataset} has other models: {known}")
    if args.threshold is None:
        args.threshold = DATASET_SPECS[args.dataset].threshold
    if args.threads:
        torch.set_num_threads(args.threads)
    dm = data_module(
        args.dataset,
        data_root=args.data_root,
        batch_size=args.batch_size,
        holdout=args.holdout,
        train_subset=args.train_subset,
        download=not args.no_download,
        label_noise=args.label_noise,
        label_noise_seed=args.label_noise_seed,
    )
    dm.setup()
    if args.window is None:
        args.window = max(1, dm.steps_per_epoch // 20)
    return dm


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    out = Path(args.out or Path("runs") / args.dataset)
    cli.require_writable_dir(parser, out, "--out")  # the default too, before any data loads
    runs_dir = out / "runs"
    try:
        dm = prepare(args)
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    import torch

    from benchmarks.models import count_parameters
    from benchmarks.registry import build_model
    from benchmarks.report import write_outputs

    meta = {
        "dataset": args.dataset,
        "epochs": args.epochs,
        "command": "hgpso-train "
        + shlex.join(_strip_notes(sys.argv[1:] if argv is None else argv)),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "hardware": _hardware(args.device),
        "software": _software(),
        "model": DATASET_SPECS[args.dataset].model_for(args.model)[1],
        "num_parameters": count_parameters(
            build_model(
                args.dataset, dm.num_classes, dm.image_shape[0], norm=args.norm, variant=args.model
            )
        ),
        "train_size": len(dm.train_set),
        "eval_size": len(dm.eval_set),
        "batch_size": args.batch_size,
        "threshold": args.threshold,
        "window": args.window,
        "final_loss_examples": args.final_loss_examples,
        "eval_split": "holdout" if args.holdout else "test",
        "notes": args.notes,
        "torch_threads": torch.get_num_threads(),
        "label_noise": label_noise_info(dm),
    }
    jobs = [(o, s) for s in args.seeds for o in args.optimizers]
    runs: list[dict[str, Any]] = []
    todo = []
    for o, s in jobs:
        config = run_config(args, o, s)
        path = runs_dir / f"{run_key(args, o, s)}.json"
        done = None if args.force else load_finished(path, config)
        if done is not None:
            print(f"skip {o} seed {s}: finished run found in {path}")
            runs.append(done)
        else:
            todo.append((o, s, config, path))

    if args.include_finished:
        runs += _other_finished_runs(args, runs_dir, {p for *_, p in todo} | _paths(runs_dir, runs))

    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover

        def tqdm(x, **_):
            return x

    runs_dir.mkdir(parents=True, exist_ok=True)
    bar = tqdm(todo, desc="runs", unit="run", disable=args.no_progress or not todo)
    for o, s, config, path in bar:
        if hasattr(bar, "set_postfix_str"):
            bar.set_postfix_str(f"{o} seed {s}")
        record = train_one(args, dm, o, s, config)
        record["command"] = meta["command"]  # the command that produced this run
        write_json(path, record)
        runs.append(record)
        print(
            f"done {o} seed {s}: accuracy {record['test_accuracy']:.4f}, final loss "
            f"{record['final_train_loss']:.4f}, steps to threshold "
            f"{record['steps_to_threshold']}, {record['wall_seconds']:.1f} s",
            flush=True,
        )
        # refresh the aggregates now (figures too, unless runs are quick: they are redrawn
        # once at the end anyway)
        slow = record["total_seconds"] > 30
        write_outputs(runs, meta, out, figures=slow and not args.no_figures)
    if runs:
        write_outputs(runs, meta, out, figures=not args.no_figures)
    print(f"results in {out}/ (summary.json, runs.csv, report.md, figures/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
