"""Open Inference Protocol v2 over gRPC (``inference.GRPCInferenceService``): protos and codec."""
