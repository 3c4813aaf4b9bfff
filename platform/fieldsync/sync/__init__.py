"""The sync server: embedded queue, listener pool, push processing, pull pages (docs/sync-design.md)."""
