"""A small-scale reproduction of the paper's comparison on the built-in toy task, on a CPU.

GRPO, RRPO (random resets), SRPO (self resets) and oracle resets (the true first wrong step, the
credit-assignment oracle of the paper's theory) train the same warm-started baby model with the
same budget of scored rollouts per step, over several seeds. Each run is an ordinary training run
(`grpo.train`), two at a time in subprocesses; then this script reads their metrics and writes

    {out}/results.md    accuracy at fixed rollout budgets, rollouts to reach a target accuracy,
                        self-localization against the oracle, correction rates by prefix
    {out}/curves.png    eval accuracy against rollouts sampled, mean and band over seeds
                        (needs matplotlib: pip install matplotlib)

    python reproduce.py                     # defaults: 4 methods x 3 seeds
    python reproduce.py --seeds 0 1 --steps 10 --out runs/quick
    python reproduce.py --oracle-noise 0.5 1.0     # also blurred oracles: localization quality
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

METHODS = {  # name: (script, extra arguments)
    "grpo": ("grpo.py", []),
    "rrpo": ("rrpo.py", ["--reset", "random"]),
    "srpo": ("srpo.py", ["--reset", "self"]),
    "oracle": ("rrpo.py", ["--reset", "oracle"]),
}


def run(method: str, seed: int, args) -> Path:
    """One training run in a subprocess with one CPU thread; skipped when already complete, else
    started afresh (--overwrite: an interrupted run's files are replaced, never appended to)."""
    out = Path(args.out) / f"{method}-seed{seed}"
    if (out / f"checkpoint-{args.steps}").is_dir():
        return out
    script, extra = METHODS[method]
    command = [sys.executable, str(Path(__file__).parent / script), "--model", "toy", "--dataset", "toy",
               "--out", str(out), "--seed", str(seed), "--steps", str(args.steps),
               "--prompts-per-step", str(args.prompts_per_step), "--group-size", "8",
               "--eval-every", str(args.eval_every), "--eval-size", str(args.eval_size),
               "--max-new-tokens", str(args.max_new_tokens), "--lr", str(args.lr),
               "--save-every", str(args.steps), "--overwrite", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(out.parent / f"{out.name}.log", "w") as log:
        subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    return out


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def eval_curve(lines: list[dict]) -> list[tuple[int, float]]:
    """(rollouts sampled so far, eval accuracy), starting at (0, accuracy before training)."""
    return [(line.get("samples_seen", 0), line["eval_acc"]) for line in lines if "eval_acc" in line]


def mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.pstdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def mean_of(lines: list[dict], key: str, steps=None) -> float | None:
    values = [line[key] for line in lines if line.get(key) is not None and (steps is None or line["step"] in steps)]
    return statistics.mean(values) if values else None


def summarize(runs: dict, args) -> str:
    """The markdown results table from the runs' metrics."""
    curves = {m: [eval_curve(read_metrics(out)) for out in outs] for m, outs in runs.items()}
    budgets = [budget for budget, _ in curves["grpo"][0]]
    rows = ["| method | " + " | ".join(f"acc @ {b} rollouts" for b in budgets) + f" | rollouts to {args.target:.2f} |",
            "| --- |" + " --- |" * (len(budgets) + 1)]
    for method, method_curves in curves.items():
        cells = [mean_sd([dict(curve).get(b) for curve in method_curves if b in dict(curve)]) for b in budgets]
        reached = [next((b for b, acc in curve if acc >= args.target), None) for curve in method_curves]
        hit = [r for r in reached if r is not None]
        to_target = f"{statistics.mean(hit):.0f} ({len(hit)}/{len(reached)} seeds)" if hit else f"not reached (0/{len(reached)})"
        rows.append(f"| {method} | " + " | ".join(cells) + f" | {to_target} |")

    diag = ["| method | reset step = first error | too early | too late | parse failures | correction, clean prefix | correction, wrong prefix | suffix acc | fresh acc |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for method in [m for m in runs if m != "grpo"]:
        all_lines = [read_metrics(out) for out in runs[method]]
        cell = lambda key, lines_list=all_lines: mean_sd([v for v in (mean_of(lines, key) for lines in lines_list) if v is not None])
        diag.append(f"| {method} | {cell('loc_exact')} | {cell('loc_early')} | {cell('loc_late')} | "
                    f"{cell('loc_parse_fail_frac')} | {cell('suffix_acc_clean_prefix')} | "
                    f"{cell('suffix_acc_wrong_prefix')} | {cell('suffix_acc')} | {cell('fresh_acc')} |")

    third = max(args.steps // 3, 1)
    srpo_lines = [read_metrics(out) for out in runs["srpo"]]
    phases = [("first third", range(1, third + 1)), ("last third", range(args.steps - third + 1, args.steps + 1))]
    loc = [f"| {name} | " + mean_sd([v for v in (mean_of(lines, "loc_exact", set(steps)) for lines in srpo_lines)
                                     if v is not None]) + " |" for name, steps in phases]
    return "\n".join([
        f"Eval accuracy (greedy, {args.eval_size} toy problems) after a number of scored rollouts, "
        f"mean ± sd over seeds {args.seeds}:", "", *rows, "",
        "Resets (means over all steps, then mean ± sd over seeds):", "", *diag, "",
        "SRPO self-localization: share of resets at the true first wrong step, over training:", "",
        "| steps | SRPO reset step = first error |", "| --- | --- |", *loc, ""])


def plot(runs: dict, path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, outs in runs.items():
        curves = [eval_curve(read_metrics(out)) for out in outs]
        budgets = [b for b, _ in curves[0]]
        accs = [[dict(c).get(b, float("nan")) for c in curves] for b in budgets]
        mean = [statistics.mean(a) for a in accs]
        low, high = [min(a) for a in accs], [max(a) for a in accs]
        ax.plot(budgets, mean, label=method)
        ax.fill_between(budgets, low, high, alpha=0.2)
    ax.set_xlabel("scored rollouts sampled")
    ax.set_ylabel("eval accuracy (greedy)")
    ax.set_title("toy task: mean over seeds, band = min..max")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one run per method and seed")
    parser.add_argument("--steps", type=int, default=40, help="training steps per run")
    parser.add_argument("--prompts-per-step", type=int, default=16, help="prompts per step (8 rollouts each)")
    parser.add_argument("--eval-every", type=int, default=5, help="steps between evaluations")
    parser.add_argument("--eval-size", type=int, default=200, help="toy problems per evaluation")
    parser.add_argument("--max-new-tokens", type=int, default=96, help="response length cap")
    parser.add_argument("--lr", type=float, default=1e-4, help="learning rate")
    parser.add_argument("--target", type=float, default=0.85, help="accuracy for the rollouts-to-target column")
    parser.add_argument("--oracle-noise", type=float, nargs="*", default=[],
                        help="also run oracle resets replaced by a random step with these probabilities")
    parser.add_argument("--workers", type=int, default=2, help="runs at a time (one CPU thread each)")
    parser.add_argument("--out", default="runs/reproduce", help="output folder")
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    import toy

    toy.load_baby_model()  # warm-start once, before the parallel runs share the cache
    for noise in args.oracle_noise:  # oracle resets blurred: a random step with this probability
        METHODS[f"oracle-noise{noise}"] = ("rrpo.py", ["--reset", "oracle", "--oracle-noise", str(noise)])
    jobs = [(method, seed) for seed in args.seeds for method in METHODS]
    with ThreadPoolExecutor(args.workers) as pool:
        outs = list(pool.map(lambda job: run(*job, args), jobs))
    runs = {method: [out for (m, _), out in zip(jobs, outs) if m == method] for method in METHODS}
    report = summarize(runs, args)
    (Path(args.out) / "results.md").write_text(report)
    print(report)
    if plot(runs, Path(args.out) / "curves.png"):
        print(f"figure: {Path(args.out) / 'curves.png'}")


if __name__ == "__main__":
    main()
