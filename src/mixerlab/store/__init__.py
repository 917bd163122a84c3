"""The research record in a database: every experiment with its code, parent, insights, scores, status,
check report, repair attempts, timings and token use. SQLite by default, PostgreSQL by URL."""

from .db import DatabaseError, open_engine, session_factory, sqlite_url
from .models import Attempt, Base, Event, Experiment, Run
from .repository import Store

__all__ = ["Attempt", "Base", "DatabaseError", "Event", "Experiment", "Run", "Store", "open_engine", "session_factory", "sqlite_url"]
