"""The L0 audit of a dataset: deterministic, versioned, the same report bytes on every machine.

`report.run_l0_audit` is the entry point; `formats`, `pii`, `toxicity` and `minhash` are its checks."""
