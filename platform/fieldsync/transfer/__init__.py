"""Transfers larger than a request: sealed chunk payloads with signed manifests (`chunks`),
snapshot bundles for first syncs (`snapshots`) and resumable uploads over tus 1.0 (`tus`)."""
