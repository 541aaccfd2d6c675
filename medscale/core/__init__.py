"""Small shared pieces used by every stage: errors, config, storage, logging."""
