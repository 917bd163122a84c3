"""The research dashboard (`mixerlab serve`): read-only pages and a JSON API over a run's database.

Pages: leaderboard (/), experiment (/experiments/{id}), lineage (/lineage), live (/live), compare
(/compare?ids=1,2). API under /api/ (schema at /openapi.json), used by the pages' scripts. Nothing writes.
Bound to 127.0.0.1 by default; bound elsewhere it requires a token (header `Authorization: Bearer <token>`,
or `?token=` once, which sets a cookie). Bad ids give 404, bad queries 422, each with a plain message.
"""

from __future__ import annotations

import difflib
import logging
import secrets
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Path as PathParam, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import DiffLexer, PythonLexer
from starlette.exceptions import HTTPException as StarletteHTTPException

from mixerlab.insights import SECTIONS
from mixerlab.store import Store
from mixerlab.tasks import TASK_NAMES

from .charts import bar_chart, line_chart, lineage_tree, score_color
from .queries import COLUMNS, SORT_KEYS, Queries

HERE = Path(__file__).parent
PAGE_SIZE = 100
MAX_COMPARE = 20  # experiments side by side: each is its code, insights and curves
ExperimentId = Annotated[int, PathParam(ge=1, le=2**63 - 1, description="an experiment's id")]
log = logging.getLogger(__name__)

SortKey = Enum("SortKey", {k: k for k in SORT_KEYS}, type=str)  # type: ignore[misc]


class Order(str, Enum):
    asc = "asc"
    desc = "desc"


def code_html(code: str) -> str:
    return highlight(code or "", PythonLexer(), HtmlFormatter(cssclass="hl", linenos="table"))


def diff_html(diff: str) -> str:
    return highlight(diff or "(no parent: nothing to compare)", DiffLexer(), HtmlFormatter(cssclass="hl"))


def parse_ids(ids: str) -> list[int]:
    try:
        parsed = [int(part) for part in ids.split(",") if part.strip()]
    except ValueError:
        raise HTTPException(422, "ids must be comma-separated experiment ids, e.g. ?ids=3,7") from None
    if len(parsed) < 2:
        raise HTTPException(422, "compare needs at least two experiment ids, e.g. ?ids=3,7")
    if len(parsed) > MAX_COMPARE:
        raise HTTPException(422, f"compare takes at most {MAX_COMPARE} experiment ids (got {len(parsed)}); pick fewer")
    if any(not 1 <= i < 2**63 for i in parsed):
        raise HTTPException(404, "no experiment with such an id; ids are positive integers below 2^63")
    return parsed


LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")


def allowed_hosts(host: str) -> list[str]:
    """The Host headers the dashboard answers: its own name and loopback's when bound to loopback (a page on
    another site that points its own name at 127.0.0.1, DNS rebinding, is refused); any name when bound to all
    interfaces, where the token guards it."""
    if host in ("0.0.0.0", "::", ""):
        return ["*"]
    return sorted({host, f"[{host}]" if ":" in host else host, *LOOPBACK_NAMES})


def same_secret(given: str, token: str) -> bool:
    """A constant-time comparison that takes any text (compare_digest raises on non-ASCII str)."""
    return secrets.compare_digest(given.encode("utf-8", "surrogatepass"), token.encode("utf-8", "surrogatepass"))


def create_app(db_url: str, token: str | None = None, host: str = "127.0.0.1") -> FastAPI:
    store = Store(db_url, read_only=True, follow_writers=True)  # a live run's dashboard follows its writes
    queries = Queries(store)
    app = FastAPI(title="mixerlab", description="Read-only view of a mixerlab research record.", version="1")
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals.update(COLUMNS=COLUMNS, TASK_NAMES=TASK_NAMES, SECTIONS=SECTIONS, score_color=score_color)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    highlight_css = HtmlFormatter(cssclass="hl").get_style_defs(".hl")

    @app.middleware("http")
    async def server_timing(request: Request, call_next):
        """Report the server's own time per request (Server-Timing header: what the benchmark reads)."""
        start = time.perf_counter()
        response = await call_next(request)
        response.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - start) * 1000:.1f}"
        # recorded text (candidate errors, LLM insights) is served as JSON or escaped HTML: never sniffed as HTML
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    hosts = allowed_hosts(host)

    @app.middleware("http")
    async def check_host(request: Request, call_next):
        name = request.headers.get("host", "").strip().lower()
        bare = name[: name.find("]") + 1] if name.startswith("[") else name.split(":", 1)[0]
        if "*" not in hosts and bare not in hosts:
            return JSONResponse({"detail": f"this dashboard answers only to {', '.join(hosts)} (Host header "
                                 f"{name[:80]!r}); open it by one of those names"}, status_code=400)
        if request.method == "HEAD":  # every page answers HEAD as its GET, without the body
            request.scope["method"] = "GET"
            response = await call_next(request)
            async for _ in response.body_iterator:
                pass
            head = Response(status_code=response.status_code)
            head.raw_headers = response.raw_headers  # every header as sent, repeated ones (Set-Cookie) too
            return head
        return await call_next(request)

    @app.middleware("http")
    async def require_token(request: Request, call_next):
        if token is None or request.url.path in ("/healthz",):
            return await call_next(request)
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip() or request.cookies.get("mixerlab_token")
        query = request.query_params.get("token")
        if query and same_secret(query, token):
            response = RedirectResponse(request.url.remove_query_params("token"), status_code=303)
            response.set_cookie("mixerlab_token", token, httponly=True, samesite="strict")
            return response
        if not given or not same_secret(given, token):
            return JSONResponse({"detail": "a token is required: open the URL printed by `mixerlab serve` (?token=...)"},
                                status_code=401)
        return await call_next(request)

    def wants_html(request: Request) -> bool:
        return not request.url.path.startswith("/api") and "text/html" in request.headers.get("accept", "text/html")

    def error_page(request: Request, status: int, message: str) -> Response:
        if wants_html(request):
            return templates.TemplateResponse(request, "error.html", {"status": status, "message": message},
                                              status_code=status)
        return JSONResponse({"detail": message}, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else "not found"
        if exc.status_code == 404 and message == "Not Found":
            message = f"no page at {request.url.path}; start from the leaderboard at /"
        return error_page(request, exc.status_code, message)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"][1:]) or "request"
            problems.append(f"invalid {where} {err.get('input')!r}: {err['msg']}")
        return error_page(request, 422, "; ".join(problems))

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception):  # pragma: no cover - logged, never shown
        log.exception("error serving %s", request.url.path)
        return error_page(request, 500, "internal error (see the server log)")

    # --- API -----------------------------------------------------------------------------------

    @app.get("/highlight.css", include_in_schema=False)
    def highlight_stylesheet() -> Response:
        return Response(highlight_css, media_type="text/css")

    @app.get("/healthz", include_in_schema=False)
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/api/runs", summary="Runs in the database")
    def api_runs() -> list[dict[str, Any]]:
        return queries.runs()

    @app.get("/api/experiments", summary="The leaderboard: experiments with their six task scores")
    def api_experiments(
        run: str | None = None,
        sort: SortKey = SortKey("mean_score"),
        order: Order = Order.desc,
        q: Annotated[str, Query(max_length=200)] = "",
        status: str | None = None,
        limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> dict[str, Any]:
        rows = queries.leaderboard(run, sort.value, order == Order.desc, q, status)
        return {"total": len(rows), "items": [r.as_json() for r in rows[offset : offset + limit]]}

    @app.get("/api/experiments/{experiment_id}", summary="One experiment, everything recorded about it")
    def api_experiment(experiment_id: ExperimentId) -> dict[str, Any]:
        data = queries.experiment(experiment_id)
        if data is None:
            raise HTTPException(404, f"no experiment with id {experiment_id}")
        return data

    @app.get("/api/lineage", summary="The tree of experiments (parent -> child)")
    def api_lineage(run: str | None = None) -> list[dict[str, Any]]:
        return queries.lineage(run)

    @app.get("/api/live", summary="What the loop is doing now")
    def api_live(run: str | None = None) -> dict[str, Any]:
        return queries.live(run)

    @app.get("/api/compare", summary="Two or more experiments side by side")
    def api_compare(ids: str) -> dict[str, Any]:
        items = []
        for experiment_id in parse_ids(ids):
            data = queries.experiment(experiment_id)
            if data is None:
                raise HTTPException(404, f"no experiment with id {experiment_id}")
            items.append(data)
        diff = "".join(difflib.unified_diff(items[0]["code"].splitlines(True), items[1]["code"].splitlines(True),
                                            items[0]["name"], items[1]["name"]))
        return {"items": items, "diff": diff}

    def knowledge(q: str, ability: str | None) -> list[dict[str, Any]]:
        from mixerlab.knowledge import ABILITIES, Retriever, load_cards
        from mixerlab.propose.space import AXES

        if ability and ability not in ABILITIES:
            raise HTTPException(422, f"unknown ability {ability!r}; use one of {', '.join(ABILITIES)}")
        cards = list(load_cards())
        if q.strip():
            hits = Retriever(cards, backend="lexical").search(q, k=len(cards))
            cards = [h.card for h in hits if h.score > 0]
        if ability:
            cards = [c for c in cards if ability in c.helps]
        options = {}
        for axis in AXES:
            for option in axis.options:
                for card_id in option.cards:
                    options.setdefault(card_id, []).append(f"{axis.name}={option.name}")
        shown = []
        for c in cards:
            data = {**c.model_dump(), "options": options.get(c.id, [])}
            for side in ("helps", "hurts"):  # each claim with its evidence in words, as the page shows it
                for task, claim in getattr(c, side).items():
                    data[side][task]["tag"] = claim.tag()
            shown.append(data)
        return shown

    @app.get("/api/knowledge", summary="The knowledge cards (filtered by words and by an ability they help)")
    def api_knowledge(q: Annotated[str, Query(max_length=200)] = "", ability: str | None = None) -> list[dict[str, Any]]:
        return knowledge(q, ability)

    @app.get("/api/knowledge/{card_id}", summary="One knowledge card")
    def api_card(card_id: Annotated[str, PathParam(max_length=60, pattern=r"^[a-z][a-z0-9_]*$")]) -> dict[str, Any]:
        found = [c for c in knowledge("", None) if c["id"] == card_id]
        if not found:
            raise HTTPException(404, f"no knowledge card {card_id!r}; see /knowledge for the list")
        return found[0]

    # --- pages -----------------------------------------------------------------------------------

    def page(request: Request, name: str, **context: Any) -> HTMLResponse:
        runs = queries.runs()
        return templates.TemplateResponse(request, name, {"runs": runs, **context})

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def leaderboard(request: Request, run: str | None = None, sort: SortKey = SortKey("mean_score"),
                    order: Order = Order.desc, q: Annotated[str, Query(max_length=200)] = "",
                    status: str | None = None, page_number: Annotated[int, Query(alias="page", ge=1)] = 1):
        rows = queries.leaderboard(run, sort.value, order == Order.desc, q, status)
        pages = max(1, -(-len(rows) // PAGE_SIZE))
        shown = rows[(page_number - 1) * PAGE_SIZE : page_number * PAGE_SIZE]
        return page(request, "leaderboard.html", rows=shown, total=len(rows), run=run, sort=sort.value,
                    order=order.value, q=q, status=status, page=page_number, pages=pages)

    @app.get("/experiments/{experiment_id}", response_class=HTMLResponse, include_in_schema=False)
    def experiment_page(request: Request, experiment_id: ExperimentId):
        data = queries.experiment(experiment_id)
        if data is None:
            raise HTTPException(404, f"no experiment with id {experiment_id}; see the leaderboard at /")
        series = {"this": [(data["scores"].get(t) or {}).get("mean") for t in TASK_NAMES]}
        if data["parent"]:
            series["parent"] = [(data["parent"]["scores"].get(t) or {}).get("mean") for t in TASK_NAMES]
        for name, scores in data["baselines"].items():
            if name != data["name"]:
                series[name] = [(scores.get(t) or {}).get("mean") for t in TASK_NAMES]
        bars = bar_chart([COLUMNS[t] for t in TASK_NAMES], series, "accuracy per task")
        curves = {t: line_chart({"test acc": c["test_acc"], "train loss": [min(1.0, x / 5) for x in c["train_loss"]]},
                                f"{COLUMNS[t]} ({c['setting']}, lr {c['lr']:g})", y_range=(0.0, 1.0))
                  for t, c in (data["curves"] or {}).items()}
        return page(request, "experiment.html", e=data, code=code_html(data["code"]), diff=diff_html(data["diff"]),
                    bars=bars, curves=curves, attempt_code=[code_html(a["code"]) for a in data["attempts"]])

    @app.get("/lineage", response_class=HTMLResponse, include_in_schema=False)
    def lineage_page(request: Request, run: str | None = None):
        nodes = api_lineage(run)
        return page(request, "lineage.html", tree=lineage_tree(nodes), run=run, count=len(nodes))

    @app.get("/knowledge", response_class=HTMLResponse, include_in_schema=False)
    def knowledge_page(request: Request, q: Annotated[str, Query(max_length=200)] = "", ability: str | None = None):
        from mixerlab.knowledge import ABILITIES

        return page(request, "knowledge.html", cards=knowledge(q, ability), q=q, ability=ability or "",
                    abilities=ABILITIES)

    @app.get("/live", response_class=HTMLResponse, include_in_schema=False)
    def live_page(request: Request, run: str | None = None):
        return page(request, "live.html", live=queries.live(run), run=run)

    @app.get("/compare", response_class=HTMLResponse, include_in_schema=False)
    def compare_page(request: Request, ids: str = ""):
        if not ids:
            return page(request, "compare.html", items=[], diff="", message="pick experiments on the leaderboard, then Compare")
        data = api_compare(ids)
        return page(request, "compare.html", items=data["items"], diff=diff_html(data["diff"]), message="")

    return app


def default_token(host: str, token: str | None) -> str | None:
    """Loopback needs no token; any other bind address gets the given one or a fresh random one."""
    if host in ("127.0.0.1", "localhost", "::1"):
        return token
    return token or secrets.token_urlsafe(24)
