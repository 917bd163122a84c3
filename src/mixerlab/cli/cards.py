"""`mixerlab cards`: the knowledge cards' claims and their evidence; with a run's database, where the claims
and the run's measurements disagree (propose/claims.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .base import app, console, db_from, fail


@app.command("cards")
def cards_command(
    db: Optional[str] = typer.Option(None, help="a run's database URL: set the cards' claims beside its measurements"),
    run_dir: Optional[Path] = typer.Option(None, help="a run directory (its mixerlab.db)"),
    card_id: Optional[str] = typer.Option(None, "--card", help="one card only (its id)"),
    show_all: bool = typer.Option(False, "--all", help="with --db: every claim checked, not only the disagreements"),
) -> None:
    """List the knowledge cards' ability claims and what each rests on; with --db or --run-dir, print where a
    card's claim and the run's measured option effects disagree."""
    from mixerlab.knowledge import load_cards

    cards = load_cards()
    if card_id is not None and card_id not in {c.id for c in cards}:
        fail(f"no card {card_id!r}; ids: {', '.join(sorted(c.id for c in cards))}")
    if db is None and run_dir is None:
        table = Table("card", "claim", "task", "evidence")
        for c in cards:
            if card_id and c.id != card_id:
                continue
            for side in ("helps", "hurts"):
                for task, claim in getattr(c, side).items():
                    table.add_row(c.id, side, task, claim.tag())
        console.print(table)
        measured = sum(len(c.measured("helps")) + len(c.measured("hurts")) for c in cards)
        total = sum(len(c.helps) + len(c.hurts) for c in cards)
        console.print(f"{len(cards)} cards; {measured} of {total} claims rest on evidence, the rest are unmeasured")
        return
    _disagreements(db_from(db, run_dir), card_id, show_all)


def _disagreements(db: str, card_id: str | None, show_all: bool) -> None:
    from mixerlab.config import LoopConfig, get_profile
    from mixerlab.loop import view
    from mixerlab.noise import noise_for
    from mixerlab.propose.claims import check_claims
    from mixerlab.store import DatabaseError, Store

    try:
        store = Store(db, read_only=True)
    except DatabaseError as err:
        fail(str(err))
    runs = store.runs()
    if not runs:
        fail(f"{db} holds no run; run `mixerlab discover` first")
    rows = [e for r in runs for e in store.experiments(r.id)]
    names = {e.id: e.name for e in rows}
    history = [view(e, names) for e in rows]
    config = LoopConfig.model_validate({k: v for k, v in (runs[-1].config or {}).items() if k in LoopConfig.model_fields})
    noise = noise_for(config.profile_label, get_profile(config.profile).train.numerics(config.device))
    checks = [c for c in check_claims(history, noise) if (card_id is None or c.card == card_id)]
    shown = checks if show_all else [c for c in checks if c.verdict in ("disagrees", "unclaimed effect")]
    table = Table("card", "option", "task", "claim", "change", "children", "noise", "verdict")
    for c in shown:
        claim = c.claim if c.claim == "none" else f"{c.claim} ({'measured' if c.measured else 'unmeasured'})"
        table.add_row(c.card, c.option, c.task, claim, f"{c.change:+.3f}", str(c.children), f"{c.threshold:.3f}",
                      c.verdict)
    console.print(table)
    counts = {v: sum(c.verdict == v for c in checks) for v in ("agrees", "disagrees", "within noise", "unclaimed effect")}
    console.print(f"{len(checks)} claims checked against {len(history)} experiments of {db} (noise: "
                  f"{noise.source if noise else 'unmeasured for this profile; 0.05 per task'}): "
                  + ", ".join(f"{n} {v}" for v, n in counts.items()))
