"""Media objects: references bound to who minted them and the record that holds them
(`references`), the embedded local store (`local`), the S3 store (`s3`), the type sniffing of
uploads (`sniff`) and the service the media endpoints call (`service`). docs/protocol.md §16."""
