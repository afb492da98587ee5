"""Generated gRPC stubs for proto/searchsvc/v1 (do not edit: regenerate with `make proto`)."""
