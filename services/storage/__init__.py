"""The storage service: images, shared read-only layers, per-container overlay rootfs and volumes."""
