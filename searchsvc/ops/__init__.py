"""Operations without gRPC: Prometheus metrics, OpenTelemetry spans, logs. The gRPC interceptors live in api/."""
