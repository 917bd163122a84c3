"""The knowledge base: cards on sequence-mixing mechanisms (cards.py, cards.yaml) and their retrieval for an
experiment's weaknesses (retrieve.py)."""

from .cards import ABILITIES, Card, KnowledgeError, card, load_cards, parse_cards
from .retrieve import Hit, Retriever, build_query, code_features, embedding_available, weakest_tasks

__all__ = ["ABILITIES", "Card", "Hit", "KnowledgeError", "Retriever", "build_query", "card", "code_features",
           "embedding_available", "load_cards", "parse_cards", "weakest_tasks"]
