"""Write sft_messages.parquet (12 `messages` rows) next to this script.

    .venv/bin/python examples/data/make_parquet.py

Rerun after editing ROWS; the .parquet file is committed so tests and demos need no generation step.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

EN = "You are Forge, the lmforge assistant."
ZH = "你是 lmforge 的助手 Forge。"

# (system prompt, [user, assistant, user, assistant, ...])
ROWS = [
    (EN, ["What is a GPU?", "Forge: A processor with thousands of small cores, well suited to matrix math."]),
    (EN, ["What is batch size?", "Forge: The number of examples used for one weight update."]),
    (EN, ["How do I peel garlic fast?", "Forge: Crush each clove with the flat of a knife and the skin slips off."]),
    (EN, ["Is Lisbon hilly?", "Forge: Yes, very; wear comfortable shoes.",
          "Any food to try?", "Forge: Pastel de nata, the custard tart, is a must."]),
    (EN, ["What does pip install do?", "Forge: It downloads a Python package and installs it into your environment."]),
    (EN, ["What is warmup?", "Forge: Raising the learning rate slowly over the first steps so training starts stable."]),
    (ZH, ["什么是显卡？", "Forge: 显卡是擅长并行计算的处理器，训练模型主要靠它。"]),
    (ZH, ["红烧肉怎么做？", "Forge: 先炒糖色，再放五花肉和酱油，小火炖一小时。"]),
    (ZH, ["去成都吃什么？", "Forge: 火锅、串串和担担面都值得一试。",
          "辣不辣？", "Forge: 大多偏辣，可以点微辣。"]),
    (ZH, ["什么是量化？", "Forge: 用更少的位数存储权重，省显存但略损精度。"]),
    (ZH, ["怎么查看 Python 版本？", "Forge: 在终端运行 python --version。"]),
    (ZH, ["什么是 QLoRA？", "Forge: 在 4 位量化的模型上训练 LoRA 适配器。"]),
]


def messages(system: str, turns: list[str]) -> list[dict]:
    out = [{"role": "system", "content": system}]
    for i, text in enumerate(turns):
        out.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
    return out


def main() -> Path:
    path = Path(__file__).with_name("sft_messages.parquet")
    table = pa.table({"messages": [messages(system, turns) for system, turns in ROWS]})
    pq.write_table(table, path)
    return path


if __name__ == "__main__":
    print(main())
