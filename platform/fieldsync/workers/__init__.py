"""Workers: the listener pool that claims queued push batches, the pools of every process with their
shared desired size, and the processing log (docs/workers.md)."""
