"""Proposers: `catalog` (offline, the default) and `llm` (any OpenAI-compatible endpoint)."""

from .base import ExperimentView, Proposal, ProposalContext, Proposer, ProposerError, TokenUse
from .catalog import CatalogProposer
from .edits import EDITS, EDITS_BY_NAME

__all__ = ["CatalogProposer", "EDITS", "EDITS_BY_NAME", "ExperimentView", "Proposal", "ProposalContext", "Proposer",
           "ProposerError", "TokenUse"]
