"""Python client and CLI for the lmforge trainer and inference services (installs without torch).

    from lmforge import TrainerClient, load_request_file

    with TrainerClient("127.0.0.1:50051") as client:
        job = client.start_training(load_request_file("examples/jobs/sft_lora.yaml") | {"dataset_id": ds})
        for event in client.stream_metrics(job.id):
            ...

    with InferenceClient() as client:      # $LMFORGE_INFERENCE_ADDRESS or 127.0.0.1:50052
        text, finished = client.chat("smollm2-135m-instruct", [{"role": "user", "content": "Hi"}])

The command line lives in `lmforge.cli` (`lmforge --help`); generated protobuf code in `lmforge.v1`.
"""

from lmforge.client import InferenceClient, TrainerClient, is_terminal, load_request_file

__all__ = ["InferenceClient", "TrainerClient", "is_terminal", "load_request_file"]
