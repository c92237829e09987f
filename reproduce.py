"""Where do resets pay? The paper's comparison on the built-in toy task, swept over the regime the
theory names (PAPER.md section 6), on a CPU.

GRPO, RRPO (random resets), SRPO (self resets) and oracle resets (the true first wrong step, the
credit-assignment oracle of the theory) train the same warm-started baby model (toy.py) with the
same hyperparameters and the same budget of scored rollouts per step, at several horizons (chains
of N operations: the longer, the lower the starting accuracy) and several seeds. Oracle resets
blurred by noise (a random step instead, with some probability) give the gain as a function of
localization accuracy; noise 1 is RRPO. Each run is an ordinary training run (`grpo.train` in a
subprocess, two at a time); this script reads their metrics and writes

    {out}/results.md, results.json   per horizon: final accuracy with a 95% interval over seeds,
                                     the gain over GRPO (paired by seed), at the same step and at
                                     as many generated tokens, rollouts and generated tokens to
                                     reach a target, localization; the noise sweep;
                                     with --report-at S, the same as the runs stood after step S
    {out}/gain-vs-start.png          gain over GRPO against starting accuracy, one line per method
    {out}/gain-vs-localization.png   gain over GRPO against how often the reset step is the first
                                     wrong one
    {out}/curves.png                 accuracy against rollouts and against generated tokens
    (the figures need matplotlib: pip install matplotlib)

    python reproduce.py            # the full sweep: 3 horizons x 4 methods x 5 seeds, + noise
    python reproduce.py --quick    # 1 seed, fewer steps: a smoke test of the whole pipeline

Accuracy is the share of 500 held-out problems solved by one sample at the training temperature
(`--eval-temperature`): the baby model's slips are sampled, and greedy decoding hides them.
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

METHODS = {  # name: (script, settings of its own)
    "grpo": ("grpo.py", {}),
    "rrpo": ("rrpo.py", {"reset": "random"}),
    "srpo": ("srpo.py", {"reset": "self"}),
    "oracle": ("rrpo.py", {"reset": "oracle"}),
    "start": ("rrpo.py", {"reset": "start"}),  # the reset buffer, reset at step 1: a control
}
DEFAULT_METHODS = ["grpo", "rrpo", "srpo", "oracle"]
RESET_METHODS = ["rrpo", "srpo", "oracle", "start"]
# Student t quantiles for a two-sided 95% interval, by degrees of freedom (beyond the table: the
# first terms of the Cornish-Fisher expansion around the normal quantile, within 1e-3 from 30 on).
T95 = dict(enumerate([12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201,
                      2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074,
                      2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042], start=1))


def t95(df: int) -> float:
    """The 97.5% quantile of Student's t with df degrees of freedom."""
    if df in T95:
        return T95[df]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def noise_method(noise: float) -> str:
    return f"oracle-noise{noise:g}"


def run_settings(method: str, horizon: int, seed: int, args) -> tuple[str, dict]:
    """The script of one run of the sweep and the settings it passes, named as in the run's config."""
    if method.startswith("oracle-noise"):
        script, extra = "rrpo.py", {"reset": "oracle", "oracle_noise": float(method.removeprefix("oracle-noise"))}
    else:
        script, extra = METHODS[method]
    if script != "grpo.py":  # fresh attempts to find a parent: the paper's 12 for a budget of 8, in proportion
        extra = {**extra, "max_fresh": 12 * args.group_size // 8}
    return script, {"model": args.model, "dataset": f"toy-{horizon}", "seed": seed, "steps": args.steps,
                    "prompts_per_step": args.prompts_per_step, "group_size": args.group_size, "lr": args.lr,
                    "loss_agg": args.loss_agg, "eval_every": args.eval_every, "eval_size": args.eval_size, "save_every": args.steps,
                    **extra}


def run(method: str, horizon: int, seed: int, args) -> Path:
    """One training run in a subprocess with one CPU thread. A complete run of the same settings
    is reused (an interrupted one is started afresh: --overwrite replaces its files, never appends
    to them); a complete run of other settings stops the sweep, so results never mix settings."""
    out = Path(args.out) / f"ops{horizon}" / f"{method}-seed{seed}"
    script, settings = run_settings(method, horizon, seed, args)
    if (out / f"checkpoint-{args.steps}").is_dir():
        saved = torch.load(out / f"checkpoint-{args.steps}" / "trainer_state.pt", weights_only=False)["config"]
        changed = {key: saved.get(key) for key, value in settings.items() if saved.get(key) != value}
        if changed:
            described = ", ".join(f"{key} {saved_value} there, {settings[key]} here"
                                  for key, saved_value in changed.items())
            raise SystemExit(f"'{out}' holds a run of other settings ({described}). Give this sweep "
                             "its own --out, or delete that folder to run it again.")
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    flags = [item for key, value in settings.items() for item in (f"--{key.replace('_', '-')}", str(value))]
    command = [sys.executable, str(Path(__file__).parent / script), *flags, "--out", str(out), "--overwrite"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    log_path = out.parent / f"{out.name}.log"
    with open(log_path, "w") as log:
        failed = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    if failed:
        last_lines = "\n".join(log_path.read_text(errors="replace").replace("\r", "\n").splitlines()[-5:])
        raise SystemExit(f"The run '{out}' failed (exit status {failed}). The end of its log, "
                         f"{log_path}:\n{last_lines}")
    return out


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def eval_curve(lines: list[dict]) -> list[tuple[int, int, float]]:
    """(rollouts sampled, tokens generated, eval accuracy) at each evaluation, from step 0."""
    curve, tokens = [], 0
    for line in lines:
        tokens += line.get("tokens_generated", 0)
        if line.get("eval_acc") is not None:
            curve.append((line.get("samples_seen", 0), tokens, line["eval_acc"]))
    return curve


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% Student t interval of the mean (0 for one value)."""
    mean = statistics.mean(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, t95(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def show(values: list[float], digits: int = 3) -> str:
    if not values:
        return "-"
    mean, half = interval(values)
    return f"{mean:.{digits}f} ± {half:.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


def first_reaching(curve, target: float):
    """The first (rollouts, tokens) after step 0 at which the accuracy reaches `target`, or None."""
    return next(((rollouts, tokens) for rollouts, tokens, acc in curve[1:] if acc >= target), None)


def accuracy_at_tokens(curve, tokens: float) -> float | None:
    """The accuracy of an evaluation curve once `tokens` tokens were generated: linear between the
    two evaluations around it, None beyond the run's last evaluation."""
    for (_, tokens0, acc0), (_, tokens1, acc1) in zip(curve, curve[1:]):
        if tokens0 <= tokens <= tokens1:
            return acc1 if tokens1 == tokens0 else acc0 + (acc1 - acc0) * (tokens - tokens0) / (tokens1 - tokens0)
    return None


def mean_metric(lines: list[dict], key: str) -> float | None:
    values = [line[key] for line in lines if line.get(key) is not None]
    return statistics.mean(values) if values else None


def horizon_stats(runs: dict[str, dict[int, Path]], up_to_step: int | None = None) -> dict:
    """The numbers of one horizon: per method, per seed final accuracy, gain over GRPO's run of the
    same seed, rollouts and tokens to the target, localization and token cost. With `up_to_step`,
    of the runs as they stood after that step ("final" is its evaluation), except the gain at GRPO's
    tokens, which reads each run's whole curve: a method that generates fewer tokens per step gets
    there later."""
    whole = {m: {seed: read_metrics(out) for seed, out in outs.items()} for m, outs in runs.items()}
    metrics = {m: {seed: [line for line in lines if up_to_step is None or line["step"] <= up_to_step]
                   for seed, lines in by_seed.items()} for m, by_seed in whole.items()}
    whole_curves = {m: {seed: eval_curve(lines) for seed, lines in by_seed.items()} for m, by_seed in whole.items()}
    curves = whole_curves if up_to_step is None else {
        m: {seed: eval_curve(lines) for seed, lines in by_seed.items()} for m, by_seed in metrics.items()}
    start = statistics.mean(curve[0][2] for curve in curves["grpo"].values())
    grpo_final = {seed: curve[-1][2] for seed, curve in curves["grpo"].items()}
    start_final = {seed: curve[-1][2] for seed, curve in curves.get("start", {}).items()}
    target = start + (statistics.mean(grpo_final.values()) - start) / 2  # halfway from start to GRPO's final

    def mean_acc(curve):  # over the evaluations after step 0
        return statistics.mean(acc for _, _, acc in curve[1:])

    def per_run(method, key):  # the run's mean of a logged metric, for the runs that log it
        values = (mean_metric(lines, key) for lines in metrics[method].values())
        return [value for value in values if value is not None]

    stats = {"start_acc": start, "target": target, "methods": {}}
    for method, by_seed in curves.items():
        paired = [seed for seed in by_seed if seed in grpo_final]

        def gain_over(base_final):  # final accuracy minus the base's run of the same seed
            return [curve[-1][2] - base_final[seed] for seed, curve in by_seed.items() if seed in base_final]

        # as accurate as what, for as many generated tokens as GRPO's run of the same seed? (left out
        # where the run ended before it had generated them)
        at_grpo_tokens = [accuracy_at_tokens(whole_curves[method][seed], curves["grpo"][seed][-1][1])
                          for seed in paired]
        # a target at or below the start (GRPO did not improve) measures nothing: no run reaches it
        reached = [first_reaching(curve, target) if target > start else None for curve in by_seed.values()]
        stats["methods"][method] = {
            "final": [curve[-1][2] for curve in by_seed.values()],
            "gain": gain_over(grpo_final),
            # against the control that resets at step 1: what the reset's place brings, the buffer aside
            "gain_over_start": gain_over(start_final),
            "gain_at_grpo_tokens": [acc - grpo_final[seed] for seed, acc in zip(paired, at_grpo_tokens)
                                    if acc is not None],
            "area": [mean_acc(by_seed[seed]) - mean_acc(curves["grpo"][seed]) for seed in paired],
            "rollouts_to_target": [r[0] for r in reached if r],
            "tokens_to_target": [r[1] for r in reached if r],
            "seeds": len(by_seed),
            "tokens_per_rollout": [curve[-1][1] / max(curve[-1][0], 1) for curve in by_seed.values()],
            "loc_exact": per_run(method, "loc_exact"),
            "suffix_acc_clean_prefix": per_run(method, "suffix_acc_clean_prefix"),
            "curves": {seed: curve for seed, curve in by_seed.items()},
        }
    return stats


def summarize(stats: dict, args, steps: int | None = None) -> str:
    """The markdown report of a sweep (of its runs after `steps`, default all of them)."""
    lines = [f"Baby model `{args.model}`, {steps or args.steps} steps x {args.prompts_per_step} prompts x "
             f"{args.group_size} rollouts, "
             f"lr {args.lr}, {args.loss_agg} loss, seeds {args.seeds}. Accuracy: one sample per problem at temperature 1 on "
             f"{args.eval_size} held-out problems, the same problems and random draws in every evaluation of "
             "every run. Means ± half-width of the 95% t interval over training seeds (it leaves out the "
             "sampling error of the one evaluation set, which every run shares); gains are paired by seed "
             "(the same data order), the mean-accuracy gain is over the evaluations after step 0. The gain at GRPO's "
             "tokens compares each run, once it had generated as many tokens as GRPO's run of the same seed "
             "(linear between its evaluations), with GRPO's final accuracy; it counts the runs that got that "
             "far.", ""]
    for horizon, h in stats["horizons"].items():
        control = "start" in h["methods"]  # the reset buffer without a reset: one more column
        lines += [f"### Chains of {horizon} operations: starting accuracy {h['start_acc']:.3f}", "",
                  f"Target for the rollouts-to-target columns: {h['target']:.3f} (halfway from the start to "
                  "GRPO's final accuracy)." if h["target"] > h["start_acc"] else
                  "No target for the rollouts-to-target columns: GRPO's final accuracy is not above the start.", "",
                  "| method | final accuracy | gain over GRPO | gain at GRPO's tokens | mean-accuracy gain over "
                  "training | rollouts to target | generated tokens to target | tokens per rollout | reset step = "
                  "first error | correction from a clean prefix |" + (" gain over start |" if control else ""),
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |" + (" --- |" if control else "")]
        for method, m in h["methods"].items():
            reach = f"{show(m['rollouts_to_target'], 0)} ({len(m['rollouts_to_target'])}/{m['seeds']})"
            tokens = f"{show(m['tokens_to_target'], 0)} ({len(m['tokens_to_target'])}/{m['seeds']})"
            gain = show(m["gain"]) if method != "grpo" else "-"
            at_tokens = (f"{show(m['gain_at_grpo_tokens'])} ({len(m['gain_at_grpo_tokens'])}/{len(m['gain'])})"
                         if method != "grpo" else "-")
            area = show(m["area"]) if method != "grpo" else "-"
            lines.append(f"| {method} | {show(m['final'])} | {gain} | {at_tokens} | {area} | {reach} | {tokens} | "
                         f"{show(m['tokens_per_rollout'], 1)} | {show(m['loc_exact'])} | "
                         f"{show(m['suffix_acc_clean_prefix'])} |"
                         + (f" {show(m['gain_over_start']) if method != 'start' else '-'} |" if control else ""))
        lines.append("")
    return "\n".join(lines)


def plot(stats: dict, out: Path) -> bool:
    """The three figures; False when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    horizons = stats["horizons"]
    fig, ax = plt.subplots(figsize=(6, 4))
    reset_methods = [method for method in RESET_METHODS if method in stats["settings"]["methods"]]
    for method in reset_methods:
        points = sorted((h["start_acc"], *interval(h["methods"][method]["gain"])) for h in horizons.values()
                        if h["methods"].get(method, {}).get("gain"))
        if points:
            x, y, err = zip(*points)
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=method)
    ax.axhline(0, color="gray", linewidth=0.8)
    ax.set_xlabel("starting accuracy (longer chains to the left)")
    ax.set_ylabel("final accuracy minus GRPO's")
    ax.set_title("gain over GRPO, 95% interval over seeds")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "gain-vs-start.png", dpi=120)
    plt.close(fig)

    noise_h = horizons.get(str(stats["noise_horizon"]))
    if noise_h:
        fig, ax = plt.subplots(figsize=(6, 4))
        blurred = [m for name, m in noise_h["methods"].items()  # the oracle, blurred oracles, and RRPO (noise 1)
                   if (name.startswith("oracle") or name == "rrpo") and m["loc_exact"] and m["gain"]]
        points = sorted((statistics.mean(m["loc_exact"]), *interval(m["gain"])) for m in blurred)
        if points:
            x, y, err = zip(*points)
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label="oracle blurred by noise (RRPO at left)")
        srpo = noise_h["methods"].get("srpo")
        if srpo and srpo["loc_exact"] and srpo["gain"]:
            mean, half = interval(srpo["gain"])
            ax.errorbar([statistics.mean(srpo["loc_exact"])], [mean], yerr=[half], marker="*", markersize=12,
                        capsize=3, linestyle="none", label="SRPO (its own localization)")
        ax.axhline(0, color="gray", linewidth=0.8)
        ax.set_xlabel("reset step = true first wrong step (share of resets)")
        ax.set_ylabel("final accuracy minus GRPO's")
        ax.set_title(f"chains of {stats['noise_horizon']} operations: gain against localization")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "gain-vs-localization.png", dpi=120)
        plt.close(fig)

    fig, axes = plt.subplots(2, len(horizons), figsize=(4 * len(horizons), 6.5), squeeze=False)
    for column, (horizon, h) in enumerate(horizons.items()):
        for method in ["grpo", *reset_methods]:
            curves = list(h["methods"][method]["curves"].values())
            for row, index in enumerate((0, 1)):
                x = [statistics.mean(c[i][index] for c in curves) for i in range(len(curves[0]))]
                y = [statistics.mean(c[i][2] for c in curves) for i in range(len(curves[0]))]
                axes[row][column].plot(x, y, label=method)
        axes[0][column].set_title(f"{horizon} operations")
        axes[0][column].set_xlabel("scored rollouts")
        axes[1][column].set_xlabel("generated tokens")
    axes[0][0].set_ylabel("accuracy (mean over seeds)")
    axes[1][0].set_ylabel("accuracy (mean over seeds)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=120)
    plt.close(fig)
    return True


def parse_args(argv=None):
    import toy

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 8 steps, 200 eval problems, 2 horizons")
    parser.add_argument("--model", default="toy", choices=sorted(toy.MODELS), help="the baby model")
    parser.add_argument("--horizons", type=int, nargs="+", default=[2, 4, 8], help="operations per problem")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="one run per method and seed")
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=sorted(METHODS),
                        help="methods to run (grpo among them: the gains are over its runs); start resets at "
                             "step 1, the reset buffer without a reset")
    parser.add_argument("--steps", type=int, default=20, help="training steps per run")
    parser.add_argument("--prompts-per-step", type=int, default=8, help="prompts per step")
    parser.add_argument("--group-size", type=int, default=8,
                        help="scored rollouts per prompt (a reset method: half fresh, half suffixes); even")
    parser.add_argument("--eval-every", type=int, default=4, help="steps between evaluations")
    parser.add_argument("--eval-size", type=int, default=500, help="held-out problems per evaluation")
    parser.add_argument("--lr", type=float, default=1e-4, help="learning rate, the same for every method")
    parser.add_argument("--loss-agg", default="seq-mean", choices=["seq-mean", "token-mean"],
                        help="the loss's average, the same for every method: over each rollout's tokens, then "
                             "over rollouts (the paper), or over all tokens of the batch")
    parser.add_argument("--oracle-noise", type=float, nargs="*", default=[0.25, 0.5],
                        help="oracle resets replaced by a random step with these probabilities")
    parser.add_argument("--noise-horizon", type=int, default=None,
                        help="horizon of the noise sweep; default: the longest")
    parser.add_argument("--report-at", type=int, nargs="*", default=[],
                        help="also report the runs as they stood after these steps (evaluated ones, below --steps)")
    parser.add_argument("--workers", type=int, default=2, help="runs at a time (one CPU thread each)")
    parser.add_argument("--out", default="runs/reproduce", help="output folder")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.steps, args.eval_size, args.eval_every = args.seeds[:1], 8, 200, 4
        args.horizons, args.oracle_noise = [args.horizons[0], args.horizons[-1]], args.oracle_noise[:1]
    args.horizons, args.seeds = list(dict.fromkeys(args.horizons)), list(dict.fromkeys(args.seeds))
    args.methods = list(dict.fromkeys(args.methods))
    ranges = {"--horizons": (args.horizons, 1, toy.MAX_N_OPS), "--seeds": (args.seeds, 0, None),
              "--steps": ([args.steps], 1, None), "--prompts-per-step": ([args.prompts_per_step], 1, None),
              "--eval-every": ([args.eval_every], 1, None), "--eval-size": ([args.eval_size], 1, None),
              "--oracle-noise": (args.oracle_noise, 0, 1), "--workers": ([args.workers], 1, None)}
    for flag, (values, low, high) in ranges.items():
        bad = [value for value in values if value < low or (high is not None and value > high)]
        if bad:
            parser.error(f"{flag} {' '.join(map(str, bad))}: must be at least {low}"
                         + (f" and at most {high}" if high is not None else "") + ".")
    if args.lr <= 0:
        parser.error(f"--lr {args.lr}: must be above 0.")
    if "grpo" not in args.methods:
        parser.error(f"--methods {' '.join(args.methods)}: add grpo, whose runs every gain is measured against.")
    if args.group_size < 2 or args.group_size % 2:
        parser.error(f"--group-size {args.group_size}: an even number of at least 2, split in half by the resets.")
    args.noise_horizon = args.noise_horizon or max(args.horizons)
    if args.oracle_noise and args.noise_horizon not in args.horizons:
        parser.error(f"--noise-horizon {args.noise_horizon} is not one of --horizons {args.horizons}: the blurred "
                     "oracle is compared with GRPO's runs at its horizon, so add it to --horizons.")
    unevaluated = [step for step in args.report_at if not (0 < step < args.steps and step % args.eval_every == 0)]
    if unevaluated:
        parser.error(f"--report-at {' '.join(map(str, unevaluated))}: the runs are evaluated every --eval-every "
                     f"{args.eval_every} steps up to --steps {args.steps}; choose evaluated steps below --steps.")
    return args


def main():
    args = parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    import toy

    toy.load_baby_model(settings=toy.MODELS[args.model])  # warm-start once, before the runs share the cache
    jobs = [(method, horizon, seed) for seed in args.seeds for horizon in args.horizons for method in args.methods]
    jobs += [(noise_method(noise), args.noise_horizon, seed) for seed in args.seeds for noise in args.oracle_noise]
    with ThreadPoolExecutor(args.workers) as pool:
        futures = [pool.submit(run, *job, args) for job in jobs]
        try:
            outs = [future.result() for future in futures]
        except BaseException:  # a failed run, other settings or Ctrl-C: start no more runs
            pool.shutdown(cancel_futures=True)
            raise
    runs = {}
    for (method, horizon, seed), out in zip(jobs, outs):
        runs.setdefault(horizon, {}).setdefault(method, {})[seed] = out
    stats = {"noise_horizon": args.noise_horizon, "settings": vars(args),
             "horizons": {str(h): horizon_stats(runs[h]) for h in args.horizons}}
    report = summarize(stats, args)
    for step in sorted(set(args.report_at), reverse=True):
        earlier = {str(h): horizon_stats(runs[h], step) for h in args.horizons}
        stats.setdefault("after_steps", {})[str(step)] = earlier
        report += f"\n## After {step} steps\n\n" + summarize({"horizons": earlier}, args, step)
    (Path(args.out) / "results.md").write_text(report)
    (Path(args.out) / "results.json").write_text(json.dumps(stats, indent=1) + "\n")
    print(report)
    if plot(stats, Path(args.out)):
        print(f"figures: {args.out}/gain-vs-start.png, gain-vs-localization.png, curves.png")


if __name__ == "__main__":
    main()
