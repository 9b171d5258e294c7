"""Cross-stage plumbing: settings, storage and logging. Depends on no other project package."""
