"""pgpig: trainer and evaluator of pose-guided person image generators on pgpig shard sets."""
