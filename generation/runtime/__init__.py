"""The per-process generation runtime: model loading, engines, the service."""
