"""Transfers larger than a request: sealed chunk payloads with signed manifests (`chunks`),
snapshot bundles for first syncs (`snapshots`), resumable uploads over tus 1.0 (`tus`) and
outbox bundles, a long-offline device's push in one upload (`outbox_bundle`)."""
