"""`lmforge-trainer`: run the trainer gRPC service.

    lmforge-trainer --port 50051                     # state in $LMFORGE_HOME (default .lmforge)
    lmforge-trainer --port 0 --slots 2               # any free port; two concurrent CPU jobs

    lmforge-trainer --on-shutdown pause --max-restarts 3
    lmforge-trainer --metrics-port 9400              # Prometheus metrics on http://127.0.0.1:9400/metrics

Prints `lmforge-trainer listening on HOST:PORT` once it serves. SIGTERM/SIGINT drain in-flight calls and
exit; running workers keep running (`--on-shutdown detach`, the default: the next server started on the
same state directory re-adopts them) or save their full state and stop (`--on-shutdown pause`; their
jobs are PAUSED and ResumeJob continues them). Only one server may use a state directory at a time.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry

from lmforge.v1 import trainer_pb2, trainer_pb2_grpc
from services.common.grpc_server import (
    ServerHandle,
    access_options,
    add_access_options,
    start_server,
    wait_for_shutdown_signal,
)
from services.common.auth import InsecureBind, open_key_file
from services.common.logging import configure_logging, get_logger
from services.common.store import CheckpointStore
from services.trainer.datasets import DatasetRegistry
from services.trainer.jobs import SHUTDOWN_MODES, JobManager, ManagerConfig, StateDirectoryLocked, detect_devices
from services.trainer.metrics import TrainerMetrics
from services.trainer.servicer import TrainerServicer

SERVICE_NAME = trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"].full_name
log = get_logger(__name__)


def lmforge_home() -> Path:
    return Path(os.environ.get("LMFORGE_HOME", ".lmforge"))


class TrainerServer:
    """The assembled service; tests build one in-process on port 0."""

    def __init__(self, home: Path, store_root: Path, *, host: str = "127.0.0.1", port: int = 0,
                 slots: int = 0, cancel_grace_seconds: float = 10.0, max_restarts: int = 2,
                 on_shutdown: str = "detach", metrics_port: int | None = None, keys_file: Path | None = None,
                 insecure: bool = False):
        keys = open_key_file(host, keys_file, insecure)
        devices = detect_devices()
        if slots and devices == ["cpu"]:
            devices = ["cpu"] * slots
        elif slots:
            devices = devices[:slots]
        self.store = CheckpointStore(store_root)
        self.datasets = DatasetRegistry(home / "datasets")
        self.registry = CollectorRegistry()
        self.jobs = JobManager(ManagerConfig(home=home, store_root=self.store.root, devices=devices,
                                             cancel_grace_seconds=cancel_grace_seconds, max_restarts=max_restarts,
                                             on_shutdown=on_shutdown), metrics=TrainerMetrics(self.registry))
        servicer = TrainerServicer(self.jobs, self.store, self.datasets, gpu=devices[0] != "cpu")
        self.handle: ServerHandle = start_server(
            lambda server: trainer_pb2_grpc.add_TrainerServiceServicer_to_server(servicer, server),
            [SERVICE_NAME], host=host, port=port, registry=self.registry, keys=keys, metrics_port=metrics_port)
        self.metrics = self.handle.metrics
        self.jobs.start()
        self.handle.set_serving(True)
        self.address = f"{host}:{self.handle.port}"
        log.info("trainer serving", address=self.address, devices=devices, home=str(home),
                 store=str(self.store.root))

    def stop(self, grace_seconds: float = 5.0) -> None:
        self.handle.set_serving(False)
        self.jobs.shutdown(grace_seconds)
        self.handle.stop(grace_seconds)
        self.jobs.db.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lmforge-trainer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("LMFORGE_TRAINER_PORT", "50051")))
    parser.add_argument("--home", type=Path, default=None, help="state directory (default $LMFORGE_HOME/trainer)")
    parser.add_argument("--store", type=Path, default=None, help="checkpoint store (default $LMFORGE_HOME/store)")
    parser.add_argument("--slots", type=int, default=0,
                        help="concurrent jobs (default: one per visible GPU, or 1 on CPU)")
    parser.add_argument("--cancel-grace", type=float, default=10.0,
                        help="seconds a cancelled worker gets to stop before SIGKILL")
    parser.add_argument("--max-restarts", type=int, default=2,
                        help="automatic restarts of a job whose worker died (a job's request may override it)")
    parser.add_argument("--on-shutdown", choices=SHUTDOWN_MODES, default="detach",
                        help="detach: leave running workers to the next server (default); pause: save their "
                             "full state and stop them")
    add_access_options(parser)
    args = parser.parse_args(argv)
    configure_logging()
    home = args.home or lmforge_home() / "trainer"
    store = args.store or Path(os.environ.get("LMFORGE_STORE", lmforge_home() / "store"))
    try:
        server = TrainerServer(home, store, host=args.host, port=args.port, slots=args.slots,
                               cancel_grace_seconds=args.cancel_grace, max_restarts=args.max_restarts,
                               on_shutdown=args.on_shutdown, **access_options(args))
    except (StateDirectoryLocked, InsecureBind) as exc:
        print(f"lmforge-trainer: {exc.message}", file=sys.stderr)
        return 1
    print(f"lmforge-trainer listening on {server.address}", flush=True)
    if server.metrics is not None:
        print(f"lmforge-trainer metrics on http://{args.host}:{server.metrics.port}/metrics", flush=True)
    wait_for_shutdown_signal()
    log.info("shutting down")
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
