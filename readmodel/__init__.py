"""The query side: the read model's schema, the projector that folds the event log into
it, provider telemetry, live delivery to subscribers and queue estimates."""
