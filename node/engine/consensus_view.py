"""Where a chain's consensus stands, for operators (`blyan_consensusState`, `blyan consensus`):
CometBFT's `dump_consensus_state` cut to what explains a stall — who proposes, whether the
proposal arrived, and how much stake stands behind each prevote and precommit target."""

from __future__ import annotations

from typing import Any

from chain.crypto import format_address
from chain.votes import NIL, STEP_PRECOMMIT, STEP_PREVOTE
from consensus.tendermint import Step
from node.engine.runner import ChainRunner


def describe_runner(runner: ChainRunner) -> dict[str, Any]:
    machine = runner.machine
    s = machine.state
    validators = machine.validators
    seen = machine.proposal_for_round(s.round)
    votes = {}
    for name, step in (("prevote", STEP_PREVOTE), ("precommit", STEP_PRECOMMIT)):
        tally = machine.votes.get_tally(s.round, step)
        votes[name] = {
            "power": machine.votes.get_power_any(s.round, step),
            "by_block": {("nil" if h == NIL else h.hex()): p for h, p in sorted(tally.items())},
        }
    return {
        "started": runner.started,
        "height": s.height,
        "round": s.round,
        "step": Step(s.step).name.lower(),
        "proposer": format_address(machine.get_proposer(s.round)),
        "proposal": None if seen is None else seen.block_hash.hex(),
        "locked_round": s.locked_round,
        "valid_round": s.valid_round,
        "validators": len(validators.validators),
        "total_power": validators.total_power,
        "voters_this_round": len(machine.votes.get_voters(s.round)),
        "votes": votes,
        "rounds_with_votes": machine.votes.rounds,
        "pending_txs": len(runner.port.mempool.pending_hashes()),
    }
