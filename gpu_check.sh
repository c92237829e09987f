#!/usr/bin/env bash
# The GPU checks, in one run of about 8 minutes on one H100:
#   1. the generation-equivalence tests on CUDA (cached sampling and thought-by-thought stopping
#      against plain `generate`);
#   2. three SRPO steps with LoRA (r = 64, bf16 base) and three with a full fine-tune (fp32 master
#      weights, bf16 autocast), on a random-weight model of Qwen2.5-1.5B's shape, gradient
#      checkpointing on (over 1B parameters), --beta 0.04 so that the update runs although a random
#      model never answers right;
#   3. the step benchmark against TRL (8 prompts x 8 x 256 tokens) and the sampling benchmark.
#
#   bash gpu_check.sh [TOKENIZER] [DATA] [OUT]
# TOKENIZER: a tokenizer folder or hub id (default Qwen/Qwen2.5-1.5B); DATA: a gsm8k-style
# .jsonl (default ../shared/data/gsm8k/train.jsonl); OUT: where runs and checkpoints go;
# MODEL (environment): where the random model is written (default $OUT/qwen2.5-1.5b-random).
set -uo pipefail
cd "$(dirname "$0")"
TOKENIZER=${1:-Qwen/Qwen2.5-1.5B}
DATA=${2:-../shared/data/gsm8k/train.jsonl}
OUT=${3:-runs/gpu-check}
MODEL=${MODEL:-$OUT/qwen2.5-1.5b-random}
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

echo "== 1. generation-equivalence tests on CUDA"
RESETS_TEST_DEVICE=cuda timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_generation.py \
    tests/test_grpo.py -k "equals_plain or budgets or free_text or logprobs_match" 2>&1 | tail -15

RUN="--model $MODEL --dataset $DATA --steps 3 --prompts-per-step 8 --group-size 8 --max-new-tokens 256
     --max-thought-tokens 64 --loc-max-new-tokens 128 --eval-size 8 --eval-every 0 --beta 0.04"
echo "== 2a. SRPO, LoRA r=64"
timeout 170 python3 srpo.py $RUN --lora-rank 64 --lr 5e-5 --out "$OUT/srpo-lora" 2>&1 | grep -v "it/s\]" | tail -8
echo "== 2b. SRPO, full fine-tune"
timeout 170 python3 srpo.py $RUN --out "$OUT/srpo-full" 2>&1 | grep -v "it/s\]" | tail -8
for run in srpo-lora srpo-full; do
    python3 -c "import json,sys; [print(sys.argv[1], {k: round(v, 2) if isinstance(v, float) else v for k, v in json.loads(l).items() if k in ('step', 'rollout_s', 'train_s', 'tokens_generated', 'max_memory_gib', 'loss', 'grad_norm', 'skipped')}) for l in open(sys.argv[2])]" $run "$OUT/$run/metrics.jsonl"
done

echo "== 3a. one step: ours vs TRL"
timeout 150 python3 benchmark.py --model "$MODEL" --dataset "$DATA" --prompts-per-step 8 --group-size 8 \
    --max-new-tokens 256 --max-thought-tokens 256 --mini-batches 1 --repeats 2 --methods grpo,srpo \
    --loc-max-new-tokens 128 --trl 2>&1 | grep -v "it/s\]" | tail -8
echo "== 3b. sampling"
timeout 170 python3 benchmark.py --model "$MODEL" --dataset "$DATA" --prompts-per-step 8 --group-size 8 \
    --max-new-tokens 256 --sampling 2>&1 | grep -v "it/s\]" | tail -10
