"""Moving large payloads: snapshot bundles (compress, chunk, encrypt, manifest) and resumable
uploads over tus 1.0 (`fieldsync.transfer.tus`)."""
