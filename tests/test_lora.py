"""LoRA (--lora-rank): only the adapters train, a checkpoint's merged model equals the adapted
model, --resume restores the adapter exactly, and a LoRA run learns the trivial behaviour the
full fine-tune learns."""
import json

import pytest
import torch
from conftest import make_model
from test_grpo import first_token_rollouts, tiny_run_args, write_problems

import grpo
import run

pytest.importorskip("peft")


def logits_of(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0]


@pytest.fixture(scope="module")
def sharp_model_dir(tmp_path_factory, tiny_tokenizer):
    """A tiny model with larger weights. The default init's tied embeddings are so small that no
    change of the layers (all LoRA can touch) moves the next-token distribution much: the lm head
    and the final norm would have to grow, and they are not adapted."""
    folder = tmp_path_factory.mktemp("sharp-model")
    make_model(tiny_tokenizer, initializer_range=0.2).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


def test_lora_trains_only_the_adapters_and_learns(sharp_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    args = tiny_run_args(sharp_model_dir, write_problems(tmp_path / "d.jsonl"), out, "--steps", "15",
                         "--prompts-per-step", "4", "--group-size", "8", "--max-new-tokens", "2",
                         "--lr", "1e-2", "--eval-size", "1", "--save-every", "1000", "--lora-rank", "8",
                         "--lora-alpha", "16")
    targets = set(range(200, 264))  # 64 of the 512 tokens: a quarter of the samples at the start
    cfg = run.parse_config(grpo.Config, argv=args)
    grpo.train(cfg, make_rollouts=first_token_rollouts(targets))
    rewards = [json.loads(line)["reward_mean"] for line in (out / "metrics.jsonl").read_text().splitlines()[1:]]
    assert rewards[0] < 0.4
    assert sum(rewards[-5:]) / 5 > 0.8

    # The base weights inside the adapted model are bit-identical to the starting model's.
    base = AutoModelForCausalLM.from_pretrained(sharp_model_dir).state_dict()
    adapted, _ = run.load_model(cfg, torch.device("cpu"), out / "checkpoint-15")
    inside = {key.replace(".base_layer", ""): value for key, value in adapted.state_dict().items()
              if ".lora_" not in key}
    assert inside.keys() == base.keys()
    assert all(torch.equal(inside[key], base[key]) for key in base)
    adapters = {key: value for key, value in adapted.state_dict().items() if ".lora_B" in key}
    assert adapters and all(value.dtype == torch.float32 for value in adapters.values())
    assert any(value.abs().sum() > 0 for value in adapters.values())  # B starts at zero: it trained

    # The merged checkpoint loads in plain transformers and computes what the adapted model does.
    merged = AutoModelForCausalLM.from_pretrained(out / "checkpoint-15")
    assert not any("lora" in key for key in merged.state_dict())
    ids = [5, 6, 7, 8, 9, 10]
    assert not torch.allclose(logits_of(merged, ids), logits_of(AutoModelForCausalLM.from_pretrained(sharp_model_dir), ids))
    assert torch.allclose(logits_of(merged, ids), logits_of(adapted, ids), atol=1e-5)


def test_lora_resume_restores_the_adapter_and_the_optimizer(tiny_model_dir, tmp_path):
    out, problems = tmp_path / "run", write_problems(tmp_path / "d.jsonl")
    # The default tiny model, whose first-token distribution LoRA barely moves: step 3 still has
    # groups with unequal rewards, so it updates (the sharp model would have learnt by then).
    lora = ("--lora-rank", "4", "--lr", "1e-2", "--group-size", "8", "--max-new-tokens", "2", "--prompts-per-step", "4")
    rewarded = first_token_rollouts(set(range(200, 264)))
    grpo.train(run.parse_config(grpo.Config, argv=tiny_run_args(tiny_model_dir, problems, out, "--steps", "2", *lora)),
               make_rollouts=rewarded)
    cfg = run.parse_config(grpo.Config, argv=tiny_run_args(tiny_model_dir, problems, out, "--steps", "3", "--resume",
                                                           *lora))
    saved, _ = run.load_model(cfg, torch.device("cpu"), out / "checkpoint-2")
    state = torch.load(out / "checkpoint-2" / "trainer_state.pt", weights_only=False)
    n_trainable = sum(1 for p in saved.parameters() if p.requires_grad)
    assert len(state["optimizer"]["state"]) == n_trainable  # AdamW holds only the adapters
    grpo.train(cfg, make_rollouts=rewarded)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [0, 1, 2, 3]
    resumed, _ = run.load_model(cfg, torch.device("cpu"), out / "checkpoint-3")
    ids = [5, 6, 7, 8]
    assert not torch.equal(logits_of(resumed, ids), logits_of(saved, ids))  # step 3 trained on step 2's adapter
    fresh, _ = run.load_model(cfg, torch.device("cpu"))
    assert not torch.equal(logits_of(saved, ids), logits_of(fresh, ids))  # the checkpoint's adapter was loaded
    assert torch.equal(logits_of(fresh, ids), logits_of(run.load_model(cfg, torch.device("cpu"), lora=False)[0], ids))


def test_resuming_a_full_fine_tune_with_lora_fails_clearly(tiny_model_dir, tmp_path):
    out, problems = tmp_path / "run", write_problems(tmp_path / "d.jsonl")
    grpo.train(run.parse_config(grpo.Config, argv=tiny_run_args(tiny_model_dir, problems, out, "--steps", "1")))
    cfg = run.parse_config(grpo.Config, argv=tiny_run_args(tiny_model_dir, problems, out, "--lora-rank", "4"))
    with pytest.raises(SystemExit, match="holds no LoRA adapter"):
        run.load_model(cfg, torch.device("cpu"), out / "checkpoint-1")


def test_dtype_auto_and_checkpointing_defaults(tiny_model_dir):
    cfg = grpo.Config(model=str(tiny_model_dir))
    assert run.weights_dtype(cfg, torch.device("cuda")) == torch.float32  # full fine-tune: fp32 master weights
    cfg.lora_rank = 8
    assert run.weights_dtype(cfg, torch.device("cuda")) == torch.bfloat16  # frozen base under LoRA
    assert run.weights_dtype(cfg, torch.device("cpu")) == torch.float32
    assert run.weights_dtype(cfg, torch.device("cuda"), lora=False) == torch.float32
    model, _ = run.load_model(grpo.Config(model=str(tiny_model_dir)), torch.device("cpu"))
    assert not run.checkpointing_on(model)  # a tiny model: off unless asked
    model, _ = run.load_model(grpo.Config(model=str(tiny_model_dir), grad_checkpointing=True), torch.device("cpu"))
    assert run.checkpointing_on(model)


def test_folded_sampling_equals_sampling_through_the_adapters(sharp_model_dir, tiny_tokenizer):
    """run.lora_folded: the same logits and greedy tokens as peft's adapter path, and afterwards
    the very same base tensors, bit-identical, with the adapters on again."""
    from transformers import AutoModelForCausalLM

    import generation

    cfg = run.parse_config(grpo.Config, argv=["--model", str(sharp_model_dir), "--lora-rank", "8",
                                              "--lora-alpha", "16"])
    model, _ = run.load_model(cfg, torch.device("cpu"))
    torch.manual_seed(0)
    layers = run.lora_layers(model)
    with torch.no_grad():
        for layer in layers.values():  # B starts at zero: make the adapters change something
            layer.lora_B["default"].weight.normal_(0, 0.2)
    before = {name: (layer.base_layer.weight, layer.base_layer.weight.clone()) for name, layer in layers.items()}
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    ids = tiny_tokenizer("Start at 7.</thought> Add 5", add_special_tokens=False).input_ids
    prompts = [ids, ids[:4]]
    adapted = logits_of(model, ids)
    through = generation.sample(model, tiny_tokenizer, prompts, 2, 16, greedy=True)
    paged = generation.sample(model, tiny_tokenizer, prompts, 2, 16, greedy=True, cache="paged")  # peft's layers too
    assert [[c.ids for c in group] for group in paged] == [[c.ids for c in group] for group in through]
    with run.lora_folded(model):
        assert all(layer.disable_adapters for layer in layers.values())
        folded = logits_of(model, ids)
        with run.lora_folded(model):  # nested: nothing is folded twice
            assert torch.equal(logits_of(model, ids), folded)
        folded_chains = generation.sample(model, tiny_tokenizer, prompts, 2, 16, greedy=True)
    with run.lora_folded(model, fold=False):
        assert torch.equal(logits_of(model, ids), adapted)
    assert torch.allclose(folded, adapted, atol=1e-5)
    assert [[c.ids for c in group] for group in folded_chains] == [[c.ids for c in group] for group in through]
    for name, layer in layers.items():
        weight, copy = before[name]
        assert layer.base_layer.weight is weight and torch.equal(weight, copy) and not layer.disable_adapters
    assert [name for name, p in model.named_parameters() if p.requires_grad] == trainable
    assert torch.equal(logits_of(model, ids), adapted)
    base = AutoModelForCausalLM.from_pretrained(sharp_model_dir)
    assert not torch.allclose(logits_of(base, ids), adapted, atol=1e-3)  # the adapters matter here
