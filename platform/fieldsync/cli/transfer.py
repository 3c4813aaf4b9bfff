"""`fieldsync transfer sweep`: remove the resumable uploads that expired (docs/cli.md,
docs/protocol.md "Transfer"). A running server also sweeps now and then on its own."""

from __future__ import annotations

from fieldsync.cli.common import Invocation, action_group, command, data_dir_option, pass_invocation

transfer = action_group("transfer", "resumable uploads (tus) kept under DATA_DIR/transfer")


@transfer.add_command
@command("sweep", "remove expired uploads (their bytes and records); uploads being written are left")
@data_dir_option
@pass_invocation
def sweep(invocation: Invocation, data_dir: str | None) -> int:
    from fieldsync.transfer.tus import UploadStore
    config = invocation.config(data_dir=data_dir)
    store = UploadStore(config.data_dir / "transfer", max_bytes=int(config["TRANSFER_MAX_BYTES"]),
                        expires_after=float(config["TRANSFER_EXPIRES_SECONDS"]))
    removed = store.sweep()
    print(f"removed {len(removed)} expired upload(s) from {store.root}")
    return 0
