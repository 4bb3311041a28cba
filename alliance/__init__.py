"""The Alliance kernel: settings, object store, catalog and the shared error types."""
