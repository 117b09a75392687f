"""Generated protobuf and gRPC modules for ``inference.GRPCInferenceService``.

``grpc_service_pb2`` builds its messages in a private descriptor pool (not protobuf's default
one), so it can be imported in the same process as ``tritonclient.grpc``, which registers the
same ``inference.*`` names. Regenerate with the command in ``grpc_service.proto``.
"""
