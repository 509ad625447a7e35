"""Re-score a GAN run under another judge: Fréchet distance, its real-vs-real floor, precision
and recall of the run's EMA generator (newest checkpoint, or best.pt), with any exported genlab encoder.

    python scripts/gan_score.py runs/gan_brain/<run> --extractor runs/lesion_brain/<run>/export
    python scripts/gan_score.py runs/gan_brain/<run>            # the run's own judge
    python scripts/gan_score.py RUN --checkpoint best --split test --set model.fid_halves=first
    python scripts/gan_score.py RUN --average-steps 1000 1250 1500 1750 2000
    python scripts/gan_score.py RUN --checkpoint best --draws 5

--average-steps scores the mean of the EMA generator's weights over those step checkpoints (an
average over steps, as stochastic weight averaging takes one): the ratio of one checkpoint
swings 6-13x between checkpoints 250 steps apart, and the average says whether that is noise
around a better generator.

--draws K scores K disjoint parts of the split (each 2 x fid_samples real slices, the same
generator noise for the same indices in every run, so two runs are compared on the same draws)
and adds, per Frechet key, the K values and the mean distance over the mean floor: one reading
of one generator at n = 500 read 3.0-7.9x over five draws, its floor 3.2-5.4.

Prints the metrics as JSON (and writes them to --out if given). Uses the run's recipe, so the
split, its size and fid_samples are those the run was scored with. The run is loaded read-only
(genlab.load_run): a run that is still training can be scored.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import genlab
from genlab.core.errors import CheckpointError, GenlabError
from genlab.data.sampler import eval_batches
from genlab.engine import checkpoints as ckpt


@torch.no_grad()
def average_generator(run, run_dir: Path, steps: list[int]) -> None:
    """The run's G_ema <- the mean of its floating-point weights over the step checkpoints."""
    paths = [ckpt.step_path(run_dir / "checkpoints", s) for s in steps]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise CheckpointError(f"--average-steps: no checkpoint {missing[0]}")
    states = [ckpt.safe_load(p)["model"] for p in paths]
    target = run.model.G_ema.state_dict()
    for k, v in target.items():
        if v.is_floating_point():
            v.copy_(sum(st[f"G_ema.{k}"].float() for st in states) / len(states))


@torch.no_grad()
def evaluate(run, split: str, start: int = 0, size: int | None = None) -> dict[str, float]:
    """The split (or its indices [start, start + size)) through the family's evaluate/summarize,
    as the trainer's evaluation does for one process: scalars averaged by batch size,
    per-example outputs summarized."""
    tc, model, data = run.recipe.train, run.model, run.data
    bs = tc.eval_batch_size or tc.batch_size
    sums: dict[str, torch.Tensor] = {}
    collected: dict[str, list[torch.Tensor]] = {}
    count = 0
    with torch.random.fork_rng(devices=[run.device] if run.device.type == "cuda" else []):
        for idx in eval_batches(data.size(split) if size is None else size, bs):
            idx = idx + start
            batch = {k: v.to(run.device) for k, v in data.get(split, idx).items()}
            batch["index"] = idx.to(run.device)
            for k, v in model.evaluate(batch).items():
                v = torch.as_tensor(v).detach()
                if v.dim() == 0:
                    sums[k] = sums.get(k, 0.0) + v.float() * len(idx)
                else:
                    collected.setdefault(k, []).append(v)
            count += len(idx)
        metrics = {k: (v / max(count, 1)).item() for k, v in sums.items()}
        if collected:
            metrics.update(model.summarize({k: torch.cat(v) for k, v in collected.items()}))
    return metrics


def draws(run, split: str, k: int) -> dict:
    """Each Frechet key's K readings on disjoint parts of the split, and their mean distance
    over their mean floor."""
    per = 2 * run.recipe.model.fid_samples
    parts = [evaluate(run, split, i * per, per) for i in range(k)]
    out: dict = {"draws": k, "draw_size": per}
    for key in parts[0]:
        if key.startswith("fid/"):
            name = key[len("fid/"):]
            fd = [p[key] for p in parts]
            floor = [p[f"fid_floor/{name}"] for p in parts]
            out[f"draws_fid/{name}"] = fd
            out[f"draws_fid_floor/{name}"] = floor
            out[f"draws_fid_ratio/{name}"] = sum(fd) / max(sum(floor), 1e-12)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--extractor", type=Path, default=None, help="exported encoder bundle (folder)")
    ap.add_argument("--lesion-judge", type=Path, default=None, help="a lesion judge folder (e.g. "
                    "judges/lesion_judge_brain): adds its Frechet distance, lesion rate and agreement")
    ap.add_argument("--split", default="val", choices=["val", "test"])
    ap.add_argument("--checkpoint", default="last", choices=["last", "best"],
                    help="the newest step checkpoint (default) or best.pt")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="another recipe key for scoring, e.g. model.fid_halves=first (the protocol "
                         "runs before that option were scored with); repeatable")
    ap.add_argument("--average-steps", type=int, nargs="+", default=None, metavar="STEP",
                    help="score the EMA generator's weights averaged over these step checkpoints")
    ap.add_argument("--draws", type=int, default=1, metavar="K",
                    help="score K disjoint parts of the split, each 2 x fid_samples slices (the "
                         "split is made that large); adds the mean FD over the mean floor")
    ap.add_argument("--out", type=Path, default=None, help="also write the metrics to this JSON file")
    args = ap.parse_args()
    overrides = [f"model.fid_extractor={args.extractor}"] if args.extractor else []
    if args.lesion_judge:
        overrides.append(f"model.lesion_judge={args.lesion_judge}")
    if args.draws < 1:
        raise GenlabError(f"--draws {args.draws}: expected at least 1")
    sizes = []
    if args.draws > 1:  # the split made large enough for K disjoint parts
        probe = genlab.load_run(args.run_dir, args.checkpoint, "cpu", overrides=overrides + args.sets)
        sizes = [f"{args.split}_size={args.draws * 2 * probe.recipe.model.fid_samples}"]
    run = genlab.load_run(args.run_dir, args.checkpoint, "cpu", data_overrides=sizes,
                          overrides=overrides + args.sets)
    if args.average_steps:
        average_generator(run, args.run_dir, args.average_steps)
    t0 = time.perf_counter()
    metrics = evaluate(run, args.split) if args.draws == 1 else draws(run, args.split, args.draws)
    result = {"run": str(args.run_dir), "step": run.step, "averaged_steps": args.average_steps,
              "split": args.split,
              "judge": run.model.judge_name, "seconds": round(time.perf_counter() - t0, 1),
              **metrics}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    try:
        main()
    except GenlabError as e:  # a bad run folder, key or checkpoint: one line, exit code 2
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
