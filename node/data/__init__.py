"""Data quality: the audit, content transfer, IPFS, the validators' data service."""
