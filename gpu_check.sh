#!/usr/bin/env bash
# The GPU checks, in parts (PARTS, default all of them):
#   tests  the generation-equivalence tests on CUDA (cached sampling and thought-by-thought
#          stopping against plain `generate`, with a dynamic, a static and a paged KV cache; the
#          static one is compiled on a GPU) and the test of the sampled distribution;
#   train  three SRPO steps with LoRA (r = 64, bf16 base) and three with a full fine-tune (fp32
#          master weights, bf16 autocast), on a random-weight model of Qwen2.5-1.5B's shape,
#          gradient checkpointing on (over 1B parameters), --beta 0.04 so that the update runs
#          although a random model never answers right;
#   trl    one step of ours (GRPO, SRPO) against TRL's GRPOTrainer, 8 prompts x 8 x 256 tokens;
#   static one step of ours (GRPO, SRPO) with the dynamic, the static (decoding compiled) and the
#          paged KV cache (continuous batching), side by side, after an untimed step each;
#   sampling  the ways of sampling one step's rollouts, n = 1 and n = 8.
# tests + train + trl took about 8 minutes on one H200 (without the static-cache tests); static and
# sampling compile the model's decoding step, each in its own process (unmeasured: budget 3-4
# minutes each; static times one step per method and cache, after an untimed one, to fit). For one
# 10-minute slot: PARTS="static sampling".
#
#   [PARTS="..."] bash gpu_check.sh [TOKENIZER] [DATA] [OUT]
# TOKENIZER: a tokenizer folder or hub id (default Qwen/Qwen2.5-1.5B); DATA: a gsm8k-style
# .jsonl (default ../shared/data/gsm8k/train.jsonl); OUT: where runs and checkpoints go;
# MODEL (environment): where the random model is written (default $OUT/qwen2.5-1.5b-random).
set -uo pipefail
cd "$(dirname "$0")"
TOKENIZER=${1:-Qwen/Qwen2.5-1.5B}
DATA=${2:-../shared/data/gsm8k/train.jsonl}
OUT=${3:-runs/gpu-check}
MODEL=${MODEL:-$OUT/qwen2.5-1.5b-random}
PARTS=${PARTS:-tests train trl static sampling}
part() { [[ " $PARTS " == *" $1 "* ]]; }
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=10
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"

# A model of Qwen2.5-1.5B's shape with random weights (the config written out: no hub needed).
python3 - "$TOKENIZER" "$MODEL" <<'EOF'
import sys, torch
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM
tokenizer, folder = AutoTokenizer.from_pretrained(sys.argv[1]), sys.argv[2]
config = Qwen2Config(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                     num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
                     rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True,
                     eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
torch.manual_seed(0)
with torch.device("cuda"):
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)
print(f"{model.num_parameters() / 1e9:.2f}B parameters")
model.save_pretrained(folder)
tokenizer.save_pretrained(folder)
EOF

if part tests; then
echo "== tests: generation equivalence on CUDA"
RESETS_TEST_DEVICE=cuda timeout 300 python3 -m pytest -q -p no:cacheprovider tests/test_generation.py \
    tests/test_grpo.py -k "equals_plain or budgets or free_text or logprobs_match or shared_context or sliding or top_p" \
    2>&1 | tail -15
fi

RUN="--model $MODEL --dataset $DATA --steps 3 --prompts-per-step 8 --group-size 8 --max-new-tokens 256
     --max-thought-tokens 64 --loc-max-new-tokens 128 --eval-size 8 --eval-every 0 --beta 0.04"
if part train; then
echo "== train: SRPO, LoRA r=64"
timeout 170 python3 srpo.py $RUN --lora-rank 64 --lr 5e-5 --out "$OUT/srpo-lora" 2>&1 | grep -v "it/s\]" | tail -8
echo "== train: SRPO, full fine-tune"
timeout 170 python3 srpo.py $RUN --out "$OUT/srpo-full" 2>&1 | grep -v "it/s\]" | tail -8
for run in srpo-lora srpo-full; do
    python3 -c "import json,sys; [print(sys.argv[1], {k: round(v, 2) if isinstance(v, float) else v for k, v in json.loads(l).items() if k in ('step', 'rollout_s', 'train_s', 'tokens_generated', 'max_memory_gib', 'loss', 'grad_norm', 'skipped')}) for l in open(sys.argv[2])]" $run "$OUT/$run/metrics.jsonl"
done

fi

BENCH="--model $MODEL --dataset $DATA --prompts-per-step 8 --group-size 8 --max-new-tokens 256
       --max-thought-tokens 256 --loc-max-new-tokens 128 --mini-batches 1 --repeats 2 --methods grpo,srpo"
if part trl; then
echo "== trl: one step, ours vs TRL"
timeout 150 python3 benchmark.py $BENCH --trl 2>&1 | grep -v "it/s\]" | tail -8
fi
if part static; then
echo "== static: one step, ours, dynamic vs static (compiled) vs paged KV cache, --beta 0.04"
timeout 330 python3 benchmark.py $BENCH --caches dynamic,static,paged --beta 0.04 --repeats 1 2>&1 | grep -v "it/s\]" | tail -11
fi
if part sampling; then
echo "== sampling: ways of sampling one step's rollouts"
timeout 270 python3 benchmark.py --model "$MODEL" --dataset "$DATA" --prompts-per-step 8 --group-size 8 \
    --max-new-tokens 256 --repeats 2 --sampling 2>&1 | grep -v "it/s\]" | tail -16
fi
