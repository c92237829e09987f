r"""Evaluate models on the paper's benchmarks: greedy pass@1, one row per benchmark and one column
per model, the table papers report.

The prompt (`data.format_prompt`), the thought-by-thought generation (`generation.sample`) and the
answer checking (`data.rewards`, that is verify.py) are the code training uses, with the limits a
checkpoint was trained with (else training's defaults) unless set here, so a number from this file
equals training's `eval_acc` on the same problems. With `--samples n`, each problem also gets n responses at the training temperature:

    mean@n = mean over problems of c/n,    pass@k = mean over problems of 1 - C(n-c, k) / C(n, k)

with c the right ones among the n (the unbiased estimator of Chen et al. 2021), for k = 2, 4, ... n.

Problems are sorted by prompt length and cut into batches of --batch-size; under torchrun process
r takes batches r, r + world, ..., and each batch's sampling is seeded by its index, so the results
do not depend on the number of processes. Writes, in --out:

    results.md                   the tables printed at the end
    results.json                 per benchmark and model: n, pass@1, mean@n, pass@k, response tokens ...
    <model>/<benchmark>.jsonl    every problem: prompt, response, extracted answer, gold, verdict

    python evaluate.py --model runs/srpo/checkpoint-200,Qwen2.5-1.5B-Instruct
    torchrun --nproc_per_node 8 evaluate.py --model Qwen2.5-1.5B-Instruct --benchmarks gsm8k,lcb --samples 16
    python evaluate.py --model model.gguf --benchmarks gsm8k,math500 --data-dir ../shared/data --limit 8
"""
import dataclasses
import importlib.util
import json
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

import data
import grpo
import localize
import run
import verify
from generation import sample
from grpo import option

MATH_BENCHMARKS = ("gsm8k", "math500", "aime24", "amc23", "minerva", "olympiadbench")
# Where each benchmark's test problems are in a --data-dir (the layout of ../shared/data).
LOCAL_FILES = {"gsm8k": "gsm8k/test.jsonl", "math500": "math500/test.jsonl", "aime24": "aime24/test.jsonl",
               "amc23": "amc23/test.jsonl", "minerva": "minerva_math/test.jsonl",
               "olympiadbench": "olympiadbench/test.jsonl"}


@dataclass
class Config:
    model: str | None = option(None, "one or more models, comma-separated: hub ids, short names, local "
                                     "folders (checkpoints), .gguf files, or toy")
    benchmarks: str = option(",".join(MATH_BENCHMARKS), "comma-separated: gsm8k, math500, aime24, amc23, "
                             "minerva, olympiadbench, code, lcb, toy, hub ids or local files")
    data_dir: str | None = option(None, "read the benchmarks from <dir>/<name>/test.jsonl (the layout of "
                                        "../shared/data) instead of the hub")
    limit: int | None = option(None, "evaluate the first N problems of each benchmark only", at_least=1)
    samples: int = option(0, "also sample N responses per problem at --temperature: mean@N and pass@k",
                          at_least=0)
    max_new_tokens: int | None = option(None, "response budget; default: that of the first checkpoint's "
                                              "training run, else training's default (4096, 96 for toy)", at_least=1)
    max_thought_tokens: int | None = option(None, "a thought ends at </thought> or after this many tokens; "
                                                  "default as --max-new-tokens (256, 16 for toy)", at_least=1)
    max_thoughts: int | None = option(None, "a response ends after this many thoughts; default as "
                                            "--max-new-tokens (20)", at_least=1)
    temperature: float | None = option(None, "temperature of --samples (greedy pass@1 ignores it); default: "
                                             "training's (1 for a baby model, else 0.7)", above=0)
    top_p: float | None = option(None, "nucleus sampling of --samples; default: training's (1 for a baby "
                                       "model, else 0.95)", above=0, at_most=1)
    batch_size: int = option(32, "prompts per generate call (divided by --samples when sampling)", at_least=1)
    check_agreement: bool = option(False, "also judge the math answers with math-verify and report how "
                                          "often it agrees with verify.py (pip install math-verify)")
    question_field: str | None = option(None, "field holding the question in a local/hub dataset")
    answer_field: str | None = option(None, "field holding the gold answer")
    out: str = option("runs/eval", "output folder")
    seed: int = option(0, "seeds the sampling of --samples")
    dtype: str = option("float32", "weights: float32 or bfloat16", choices=["float32", "bfloat16"])
    kv_cache: str = option("dynamic", "KV cache: dynamic, static (compiled on a GPU) or paged (continuous "
                                      "batching); the same greedy tokens, sampled ones from the same distribution",
                           choices=["dynamic", "static", "paged"])

    def __post_init__(self):
        run.check_ranges(self)  # parse_config turns a value out of its option's range into a usage error


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimate of pass@k from n samples of which c are right: 1 - C(n-c, k) / C(n, k),
    as a product that never forms the large binomials (Chen et al. 2021).

    >>> pass_at_k(4, 1, 2), pass_at_k(5, 2, 3), pass_at_k(10, 0, 5), pass_at_k(4, 1, 1)
    (0.5, 0.9, 0.0, 0.25)
    """
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def short_names(names: list[str]) -> list[str]:
    """Table labels: the shortest ending of each path or hub id that no other name shares.

    >>> short_names(["runs/grpo/checkpoint-60", "runs/srpo/checkpoint-60", "Qwen/Qwen2.5-1.5B"])
    ['grpo/checkpoint-60', 'srpo/checkpoint-60', 'Qwen2.5-1.5B']
    """
    parts = [Path(name).parts for name in names]
    labels = []
    for i, own in enumerate(parts):
        others = parts[:i] + parts[i + 1:]
        depth = next((d for d in range(1, len(own) + 1) if all(own[-d:] != other[-d:] for other in others)),
                     len(own))
        labels.append("/".join(own[-depth:]))
    return labels


def file_name(label: str) -> str:
    """A label as one file name: file_name("grpo/checkpoint-60") == "grpo_checkpoint-60"."""
    return re.sub(r"[^\w.-]+", "_", label)


def load_benchmark(name: str, cfg: Config) -> list[dict]:
    """The test problems of a benchmark, from --data-dir when given, else as training loads them."""
    if cfg.data_dir and name in LOCAL_FILES:
        path = Path(cfg.data_dir) / LOCAL_FILES[name]
        if not path.is_file():
            raise SystemExit(f"--data-dir: '{path}' does not exist. Point --data-dir at a folder laid out "
                             f"like ../shared/data, or drop it to load '{name}' from the hub.")
        name = str(path)
    examples = run.load_examples(name, False, cfg)
    return examples[:cfg.limit] if cfg.limit is not None else examples


LIMITS = ("max_new_tokens", "max_thought_tokens", "max_thoughts")


def generation_settings(cfg: Config, models: list[str]) -> grpo.Config:
    """One training config that every model is evaluated with (a table compares models under the
    same limits). Each limit, and the temperature and top-p of --samples, is the one given here,
    else the one the first checkpoint among the models was trained with (its trainer_state.pt),
    else training's default for the first model."""
    trained = {}
    for name in models:
        state = Path(name) / "trainer_state.pt"
        if state.is_file():  # mmap: the optimizer state it also holds is not read
            trained = torch.load(state, map_location="cpu", mmap=True, weights_only=False)["config"]
            break
    settings = {key: getattr(cfg, key) if getattr(cfg, key) is not None else trained.get(key)
                for key in (*LIMITS, "temperature", "top_p")}
    if settings["max_thoughts"] is None:
        settings["max_thoughts"] = grpo.Config.max_thoughts
    return grpo.Config(model=models[0], **settings, dtype=cfg.dtype, kv_cache=cfg.kv_cache)


def response_record(example: dict, chain, text: str, reward: float) -> dict:
    """One response as the JSONL shows it: its text, the answer (or program) read from it, the verdict."""
    extracted = verify.extract_code(text) if "tests" in example else verify.extract_answer(text)
    return {"response": text, "extracted": extracted, "reward": reward, "finish": chain.finish,
            "tokens": len(chain.ids)}


def generate_batches(model, tokenizer, examples, gen: grpo.Config, n: int, batch_size: int, seed_key: str,
                     rank: int, world: int, desc: str) -> dict[int, list[dict]]:
    """{problem index: its n response records} for every problem, greedy when n is 0 (one
    response). Each process generates its share of the batches, then they share the records; the
    batches, and the seed of each, do not depend on `world`."""
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i]["prompt_ids"]))  # longest first
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    mine = batches[rank::world]
    out = {}
    with tqdm(total=sum(map(len, mine)), desc=desc, unit="problem", disable=rank != 0) as bar:
        for b, batch in zip(range(rank, len(batches), world), mine):
            chunk = [examples[i] for i in batch]
            torch.manual_seed(random.Random(f"{seed_key}-{b}").randrange(2**63))
            chains = sample(model, tokenizer, [ex["prompt_ids"] for ex in chunk], max(n, 1), gen.max_new_tokens,
                            gen.temperature, gen.top_p, greedy=n == 0, max_thought_tokens=gen.max_thought_tokens,
                            max_thoughts=gen.max_thoughts, cache=gen.kv_cache)
            flat = [(ex, chain, localize.decode(tokenizer, chain.ids)) for ex, group in zip(chunk, chains)
                    for chain in group]
            scores = data.rewards([ex for ex, _, _ in flat], [text for _, _, text in flat])
            records = iter(response_record(*response, score) for response, score in zip(flat, scores))
            for i, group in zip(batch, chains):
                out[examples[i]["index"]] = [next(records) for _ in group]
            bar.update(len(chunk))
    if dist.is_initialized():
        every = [None] * world
        dist.all_gather_object(every, out)
        out = {i: records for part in every for i, records in part.items()}
    return out


@torch.no_grad()
def evaluate_benchmark(model, tokenizer, examples: list[dict], gen: grpo.Config, cfg: Config, benchmark: str,
                       rank: int, world: int, desc: str) -> list[dict]:
    """Every problem's record, in the benchmark's order, on every process: its prompt and gold
    answer, the greedy response and, with --samples, the sampled ones."""
    greedy = generate_batches(model, tokenizer, examples, gen, 0, cfg.batch_size, "greedy", rank, world, desc)
    sampled = {}
    if cfg.samples:
        sampled = generate_batches(model, tokenizer, examples, gen, cfg.samples,
                                   max(1, cfg.batch_size // cfg.samples), f"{cfg.seed}-{benchmark}", rank, world,
                                   f"{desc} x{cfg.samples}")
    records = []
    for ex in examples:
        records.append({"index": ex["index"], "question": ex["question"],
                        "prompt": tokenizer.decode(ex["prompt_ids"], clean_up_tokenization_spaces=False),
                        "gold": ex.get("answer"), **greedy[ex["index"]][0]})
        if cfg.samples:
            records[-1]["samples"] = sampled[ex["index"]]
    return records


def summarize(records: list[dict], samples: int) -> dict:
    """The numbers of one benchmark and model: greedy pass@1, share of responses with an answer
    (or program), share cut by a limit without one, mean response tokens; mean@n and pass@k."""
    def mean(values):
        values = list(values)
        return sum(values) / len(values) if values else None

    summary = {"n": len(records), "pass@1": mean(r["reward"] for r in records),
               "answered": mean(r["extracted"] is not None for r in records),
               "truncated": mean(r["finish"] in ("max_thoughts", "budget") for r in records),
               "response_tokens": mean(r["tokens"] for r in records)}
    if samples:
        right = [sum(s["reward"] == 1.0 for s in r["samples"]) for r in records]
        summary[f"mean@{samples}"] = mean(c / samples for c in right)
        for k in [k for k in range(2, samples + 1) if k == samples or k & (k - 1) == 0]:  # 2, 4, 8 ... n
            summary[f"pass@{k}"] = mean(pass_at_k(samples, c, k) for c in right)
    if any("math_verify" in r for r in records):
        summary["checker_agreement"] = mean(r["math_verify"] == r["reward"] for r in records if "math_verify" in r)
    return summary


def markdown_table(results: dict, models: list[str], metric: str, title: str) -> str:
    """One row per benchmark, one column per model, then the unweighted average over benchmarks;
    values in percent."""
    lines = [f"| {title} | n | " + " | ".join(models) + " |", "| --- | --- |" + " --- |" * len(models)]

    def cell(value):
        return "-" if value is None else f"{100 * value:.1f}"

    for benchmark, by_model in results.items():
        sizes = "/".join(dict.fromkeys(str(by_model[m]["n"]) for m in models))  # differ only if prompts were dropped
        lines.append(f"| {benchmark} | {sizes} | " + " | ".join(cell(by_model[m].get(metric)) for m in models) + " |")
    averages = []
    for m in models:
        values = [by_model[m].get(metric) for by_model in results.values()]
        averages.append(None if None in values else sum(values) / len(values))
    lines.append("| average | | " + " | ".join(cell(value) for value in averages) + " |")
    return "\n".join(lines) + "\n"


def write_report(results: dict, models: list[str], settings: dict, cfg: Config) -> None:
    """results.md (the tables, also printed) and results.json."""
    titles = {"pass@1": "pass@1 (greedy)"}
    if cfg.samples:
        titles[f"mean@{cfg.samples}"] = f"mean@{cfg.samples} (T={settings['temperature']})"
    if cfg.samples > 1:
        titles[f"pass@{cfg.samples}"] = f"pass@{cfg.samples} (T={settings['temperature']})"
    if cfg.check_agreement:
        titles["checker_agreement"] = "verify.py agrees with math-verify"
    tables = "\n".join(markdown_table(results, models, metric, title) for metric, title in titles.items())
    out = Path(cfg.out)
    (out / "results.md").write_text(tables)
    (out / "results.json").write_text(json.dumps({"settings": settings, "results": results}, indent=1) + "\n")
    print("\n" + tables + f"\nWritten: {out / 'results.md'}, {out / 'results.json'}, and one JSONL per "
          f"benchmark and model in {out}/<model>/.")


def main(cfg: Config) -> dict:
    if not cfg.model:
        raise SystemExit("Pass --model: one or more models, comma-separated (hub ids, short names, "
                         "checkpoint folders, .gguf files).")
    if cfg.check_agreement and importlib.util.find_spec("math_verify") is None:
        raise SystemExit("--check-agreement needs math-verify: pip install math-verify (or drop the flag).")
    models, benchmarks = cfg.model.split(","), cfg.benchmarks.split(",")
    for flag, names in (("--model", models), ("--benchmarks", benchmarks)):
        if len(set(names)) < len(names) or "" in names:
            raise SystemExit(f"{flag}: a name is empty or given twice in {names}.")
    model_labels = short_names(models)
    # a local file's label goes without its extension: gsm8k/test.jsonl -> gsm8k/test
    benchmark_labels = short_names([str(Path(b).with_suffix("")) if Path(b).is_file() else b for b in benchmarks])
    rank, world, device = run.compute_init()
    problems = {label: load_benchmark(name, cfg) for name, label in zip(benchmarks, benchmark_labels)}
    gen = generation_settings(cfg, models)
    settings = {"models": dict(zip(model_labels, models)), **{limit: getattr(gen, limit) for limit in LIMITS},
                "temperature": gen.temperature, "top_p": gen.top_p, "samples": cfg.samples, "limit": cfg.limit}
    if rank == 0:
        print("Generation limits: " + ", ".join(f"{limit} {getattr(gen, limit)}" for limit in LIMITS))
    results = {label: {} for label in benchmark_labels}
    for model_name, model_label in zip(models, model_labels):
        model, tokenizer = run.load_model(dataclasses.replace(gen, model=model_name), device)
        model.eval()
        context = getattr(model.config, "max_position_embeddings", 10**9)
        for benchmark, loaded in problems.items():
            examples = [dict(ex, index=i) for i, ex in enumerate(loaded)]
            examples, dropped = data.tokenize_prompts(examples, tokenizer, gen.max_new_tokens, context)
            if dropped and rank == 0:
                print(f"{benchmark}: {dropped} prompts leave no room for {gen.max_new_tokens} new tokens in the "
                      f"context of {model_label} ({context}): not evaluated.")
            records = evaluate_benchmark(model, tokenizer, examples, gen, cfg, benchmark, rank, world,
                                         f"{model_label} {benchmark}")
            if rank == 0:
                if cfg.check_agreement:
                    for r in records:
                        if r["gold"] is not None:
                            r["math_verify"] = float(verify.is_equiv(r["extracted"], r["gold"], backend="math_verify"))
                path = Path(cfg.out) / file_name(model_label) / f"{file_name(benchmark)}.jsonl"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("".join(json.dumps(r) + "\n" for r in records))
                results[benchmark][model_label] = summarize(records, cfg.samples)
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if rank == 0:
        write_report(results, model_labels, settings, cfg)
    run.close_process_group()
    return results


if __name__ == "__main__":
    main(run.parse_config(Config))
