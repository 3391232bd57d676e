"""`blyan dataset cid` and `blyan dataset redact`: local verbs, no node needed."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from chain.unixfs import compute_dataset_cid
from node.cli.main import main

SECRETS = ("ann.lee@fastmail.fm", "4111 1111 1111 1111", "+1 415 555 2671")


def test_cid_is_the_unixfs_cid(tmp_path: Path) -> None:
    for size in (0, 10, 300_000):
        f = tmp_path / f"f{size}"
        f.write_bytes(bytes(range(256)) * (size // 256) + b"x" * (size % 256))
        result = CliRunner().invoke(main, ["dataset", "cid", str(f)])
        assert result.exit_code == 0 and result.output.strip() == compute_dataset_cid(f.read_bytes())


def test_redact_writes_a_copy_without_the_values_and_prints_counts_only(tmp_path: Path) -> None:
    src = tmp_path / "customers.txt"
    src.write_text("".join(f"Customer {i} wrote about the garden. Contact {s}\n" for i, s in enumerate(SECRETS)))
    out = tmp_path / "clean.txt"
    result = CliRunner().invoke(main, ["dataset", "redact", str(src), "--format", "text", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "1 card, 1 email, 1 phone" in result.output
    text = out.read_text()
    assert text.count("[REDACTED:") == 3 and "Customer 2 wrote about the garden" in text
    for secret in SECRETS:
        assert secret not in text and secret not in result.output
    same = CliRunner().invoke(main, ["dataset", "redact", str(src), "--format", "text", "--out", str(src)])
    assert same.exit_code == 1 and "another file" in same.output
