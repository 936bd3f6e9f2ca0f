"""What every recipe shares (imported by workers only; torch and TRL are fair game here):

- `context`: `RecipeContext` (spec, store, emit, stop flag, work dir, device) and `Cancelled`;
- `adapters`: full / LoRA / QLoRA resolved into peft + bitsandbytes, precision, loading a base to train;
- `common`: the TrainingArguments every TRL config is built from, the tokenizer, the train/eval split;
- `callbacks`: metrics, store checkpoints, best checkpoint, early stopping, cancellation, `finish_training`;
- `text`: packed causal-LM training on `text` rows (pretraining and continued pretraining);
- `vocabulary`: vocabulary expansion (new tokens, mean-of-sub-token init);
- `online_rl`: the run GRPO and RLOO share on TRL's online trainers;
- `rollouts`: rollout-sample events; `prompts`: prompt-only rows as chat messages.

Methods never import each other: what two recipes share lives here.
"""
