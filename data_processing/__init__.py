"""data_processing."""
