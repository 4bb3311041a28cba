"""Security tests: partner isolation, tokens, presigned URLs and path tricks against the delivery service."""
