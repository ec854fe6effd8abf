"""Data: validated records, tfds (array_record) builders, tokenisation and batching."""
