"""The generation engine shared by the inference service and the trainer (DESIGN.md §1, "engine").

    backends/       token-level backends: transformers (+bitsandbytes, peft; continuous batching) and vLLM;
                    `load_backend(kind, model_dir, options)` loads one from a model directory,
                    `TransformersBackend.from_model(model, tokenizer)` wraps a model already in memory
    sampling.py     SamplingConfig and its checks
    textstream.py   token ids -> exact UTF-8 text deltas, stop sequences held back
    generation.py   prompt rendering, message checks, one request's n choices as Delta / Finished items
    batch.py        generate_all: many prompts at once (offline generation: distillation, RFT, Evaluate)

The engine imports only `services.common` and third-party packages, never `services.trainer` or
`services.inference`; importing this package (or base/sampling/textstream/generation/batch) loads no torch.
"""
