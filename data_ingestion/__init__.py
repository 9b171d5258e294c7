"""Stage 1: get the Fashion-MNIST images (acquire) and upload them to the store with a manifest (ingest)."""
