"""data_ingestion."""
