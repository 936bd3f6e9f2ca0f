"""Python client and CLI for the lmforge trainer service (installs without torch).

    from lmforge import TrainerClient, load_request_file

    with TrainerClient("127.0.0.1:50051") as client:
        job = client.start_training(load_request_file("examples/jobs/sft_lora.yaml") | {"dataset_id": ds})
        for event in client.stream_metrics(job.id):
            ...

The command line lives in `lmforge.cli` (`lmforge --help`); generated protobuf code in `lmforge.v1`.
"""

from lmforge.client import TrainerClient, is_terminal, load_request_file

__all__ = ["TrainerClient", "is_terminal", "load_request_file"]
