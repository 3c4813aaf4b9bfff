"""The sync protocol's server side: receive a push, apply it, assemble pull pages, scopes and results
(docs/protocol.md, docs/sync-design.md). The queue and the listener pool live in `queue/` and `workers/`."""
