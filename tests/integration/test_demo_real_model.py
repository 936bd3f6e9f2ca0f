"""The README demo on the real SmolLM2-135M-Instruct (a short run): train, then chat; and the adapter it made."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def test_demo_trains_a_lora_adapter_on_smollm2(tmp_path, smollm2_store):
    env = {**os.environ, "LMFORGE_STORE": str(smollm2_store)}
    result = subprocess.run([sys.executable, "scripts/demo.py", "--home", str(tmp_path), "--max-steps", "2"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "final state: SUCCEEDED" in result.stdout
    adapter_id = re.search(r"trained adapter id: (\S+)", result.stdout).group(1)
    # ...then it serves the base model and the new adapter and compares their answers.
    assert "inference service listening on" in result.stdout
    assert result.stdout.count("base + trained adapter") == 2, result.stdout[-3000:]

    # The adapter loads onto the base with peft and the model still answers, in Chinese too.
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir = smollm2_store / "models" / "smollm2-135m-instruct"
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "用一句话介绍你自己。"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        base_logits = base(**prompt).logits
        tuned = PeftModel.from_pretrained(base, smollm2_store / "adapters" / adapter_id)
        tuned_logits = tuned(**prompt).logits
        output = tuned.generate(**prompt, max_new_tokens=12, do_sample=False)
    assert not torch.allclose(base_logits, tuned_logits), "the trained adapter changes the model"
    answer = tokenizer.decode(output[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    assert answer.strip()
