"""Rewards of RL jobs (GRPO, RLOO, RFT): a server-side registry of reward functions, by name.

- `registry`: what requests see — `RewardFunctionSpec`, the available names (built-ins and operator entry
  points), `check_reward_specs`, `required_columns`. No torch; the servicer imports it.
- `builtins`: the built-in scorers (`exact_match`, `numeric_match`, `math_equivalence`, `format_regex`,
  `length_penalty`, `language_consistency`, `keyword`) with their params; `texts`: the text views they read.
- `runtime`: in the worker — `build_reward_functions` (TRL-signature callables that never raise on a
  sample), `RolloutRecorder` (the latest batch, for rollout samples).
- `reward_model`: loading and scoring a stored REWARD_MODEL (the `reward_model` reward), a leaf.

docs/trainer.md ("Reward functions") documents every built-in.
"""
