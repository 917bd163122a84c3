"""Proposers: `catalog` (offline, the default), `search` (the design space) and `llm` (any OpenAI-compatible
endpoint). A new one subclasses `BaseProposer` and implements `propose` (and `repair`): base.py."""

from .base import BaseProposer, ExperimentView, Proposal, ProposalContext, Proposer, ProposerError, TokenUse
from .catalog import CatalogProposer
from .edits import EDITS, EDITS_BY_NAME

__all__ = ["BaseProposer", "CatalogProposer", "EDITS", "EDITS_BY_NAME", "ExperimentView", "Proposal", "ProposalContext", "Proposer",
           "ProposerError", "TokenUse"]
