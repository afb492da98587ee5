"""The gRPC front: the servicer (proto <-> domain only), server wiring, auth, TLS, admission, interceptors."""
