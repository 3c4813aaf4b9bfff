"""Keys and encryption: key providers (local, AWS KMS), the data-key ring, field-level encryption,
rotation and crypto-shredding, and the development TLS certificates (docs/keys.md)."""
