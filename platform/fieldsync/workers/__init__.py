"""Workers: the listener pool that claims queued push batches, the pools of every process with their
shared desired size, the dead letters and the processing log (docs/workers.md)."""
