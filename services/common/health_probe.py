"""`python -m services.common.health_probe HOST:PORT [SERVICE]`: exit 0 when the server's gRPC health service
says SERVING (for SERVICE, default the whole server), 1 otherwise. The container health check of the
images (docker/compose.yaml) and anything else that needs a yes/no without grpcurl."""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def serving(address: str, service: str = "", timeout: float = 5.0) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                               timeout=timeout)
        except grpc.RpcError as exc:
            print(f"{address}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return False
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
    print(f"{address} {service or '(server)'}: {status}")
    return answer.status == health_pb2.HealthCheckResponse.SERVING


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not 1 <= len(args) <= 2:
        print(__doc__, file=sys.stderr)
        return 2
    return 0 if serving(args[0], args[1] if len(args) == 2 else "") else 1


if __name__ == "__main__":
    sys.exit(main())
