"""The domain model every layer speaks: types, the filter language, stored documents, answer text rules. No I/O, no gRPC."""
