"""The dashboard's API (every endpoint, bad input, token) on a database filled by a real `tiny` run."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from mixerlab.tasks import Task
from mixerlab.web.app import create_app

pytestmark = pytest.mark.slow
LOCAL = "http://127.0.0.1"  # the dashboard answers only to the names it serves (web/app.py allowed_hosts)


@pytest.fixture(scope="module")
def client(tiny_run) -> TestClient:
    run_dir, _ = tiny_run
    return TestClient(create_app(f"sqlite:///{run_dir / 'mixerlab.db'}"), base_url=LOCAL)


def test_runs_and_leaderboard(client: TestClient) -> None:
    runs = client.get("/api/runs").json()
    assert len(runs) == 1 and runs[0]["status"] == "finished"
    board = client.get("/api/experiments").json()
    assert board["total"] == 4
    names = [i["name"] for i in board["items"]]
    assert names[:2] == ["delta_net_4layer", "gated_delta_net_4layer"]  # baselines pinned
    candidates = board["items"][2:]
    assert [c["mean_score"] for c in candidates] == sorted((c["mean_score"] for c in candidates), reverse=True)
    by_compress = client.get("/api/experiments", params={"sort": "compress", "order": "asc"}).json()["items"][2:]
    values = [c["scores"]["compress"]["mean"] for c in by_compress]
    assert values == sorted(values)
    word = candidates[0]["name"].split("_")[-1]
    filtered = client.get("/api/experiments", params={"q": word}).json()
    assert filtered["total"] >= 1 and all(word in i["name"] for i in filtered["items"])
    assert client.get("/api/experiments", params={"status": "done"}).json()["total"] == 4
    assert client.get("/api/experiments", params={"status": "failed"}).json()["total"] == 0
    assert client.get("/api/experiments", params={"limit": 1, "offset": 1}).json()["items"][0]["name"] == "gated_delta_net_4layer"


def test_experiment_lineage_live_compare(client: TestClient) -> None:
    items = client.get("/api/experiments").json()["items"]
    child = next(i for i in items if i["kind"] == "candidate" and i["parent"] != "delta_net_4layer") \
        if any(i["parent"] not in (None, "delta_net_4layer") for i in items) else items[-1]
    detail = client.get(f"/api/experiments/{child['id']}").json()
    assert set(detail["insights"]) == {"observations", "code_issues", "reasoning", "expected", "lessons"}
    assert detail["diff"].startswith("--- parent.py") and detail["attempts"] and detail["check_report"]["checks"]
    assert detail["parent"]["name"] == child["parent"] and detail["curves"]
    lineage = client.get("/api/lineage").json()
    assert {n["name"] for n in lineage} == {i["name"] for i in items}
    assert all(n["parent_id"] in {m["id"] for m in lineage} for n in lineage if n["parent_id"])
    live = client.get("/api/live").json()
    assert live["status"] == "finished" and live["events"] and live["best"]["mean_score"] > 0
    ids = ",".join(str(i["id"]) for i in items[:2])
    compare = client.get("/api/compare", params={"ids": ids}).json()
    assert len(compare["items"]) == 2 and compare["diff"].startswith("--- delta_net_4layer")
    for path in ("/", f"/experiments/{child['id']}", "/lineage", "/live", f"/compare?ids={ids}", "/compare"):
        page = client.get(path, headers={"accept": "text/html"})
        assert page.status_code == 200 and "<html" in page.text, path
    assert child["name"] in client.get("/", headers={"accept": "text/html"}).text
    # every page that tabulates scores has a column per task (a renamed template global once emptied them silently)
    for path, marker in (("/", "data-sort='{task}'"), (f"/experiments/{child['id']}", "<th>{column}</th>"),
                         (f"/compare?ids={ids}", "<th>{column}</th>")):
        html = client.get(path, headers={"accept": "text/html"}).text.replace('"', "'")
        assert all(marker.format(task=t.value, column=t.column) in html for t in Task), path


@pytest.mark.parametrize(
    "path, status, message",
    [
        ("/api/experiments/99999", 404, "no experiment with id 99999"),
        ("/api/experiments/abc", 422, "invalid experiment_id 'abc'"),
        ("/api/experiments?sort=speed", 422, "invalid sort 'speed'"),
        ("/api/experiments?order=sideways", 422, "invalid order 'sideways'"),
        ("/api/experiments?limit=0", 422, "invalid limit"),
        ("/api/compare?ids=1,x", 422, "comma-separated experiment ids"),
        ("/api/compare?ids=1", 422, "at least two"),
        ("/api/compare?ids=1,99999", 404, "no experiment with id 99999"),
        ("/api/compare", 422, "invalid ids"),
        ("/no/such/page", 404, "no page at /no/such/page"),
        ("/api/knowledge?ability=flying", 422, "unknown ability 'flying'"),
        ("/api/knowledge/nosuch", 404, "no knowledge card 'nosuch'"),
    ],
)
def test_bad_ids_and_queries(client: TestClient, path: str, status: int, message: str) -> None:
    response = client.get(path, headers={"accept": "application/json"})
    assert response.status_code == status and message in response.json()["detail"]
    assert "Traceback" not in response.text
    page = client.get(path, headers={"accept": "text/html"})
    assert page.status_code == status and message.split("'")[0] in page.text and "Traceback" not in page.text


def test_read_only_and_openapi(client: TestClient) -> None:
    assert client.post("/api/experiments", json={}).status_code == 405
    assert client.delete("/api/experiments/1").status_code == 405
    schema = client.get("/openapi.json").json()
    assert {"/api/runs", "/api/experiments", "/api/experiments/{experiment_id}", "/api/lineage", "/api/live",
            "/api/compare"} <= set(schema["paths"])
    assert all(set(ops) == {"get"} for ops in schema["paths"].values())


def test_token_is_required_when_set(tiny_run) -> None:
    run_dir, _ = tiny_run
    app = create_app(f"sqlite:///{run_dir / 'mixerlab.db'}", token="s3cret")
    guarded = TestClient(app, follow_redirects=False, base_url=LOCAL)
    assert guarded.get("/api/runs").status_code == 401
    assert guarded.get("/api/runs", headers={"authorization": "Bearer wrong"}).status_code == 401
    assert guarded.get("/api/runs", headers={"authorization": "Bearer s3cret"}).status_code == 200
    login = guarded.get("/?token=s3cret")
    assert login.status_code == 303 and "mixerlab_token" in login.headers["set-cookie"]
    assert TestClient(app, cookies={"mixerlab_token": "s3cret"}, base_url=LOCAL).get("/api/runs").status_code == 200
    assert TestClient(app, cookies={"mixerlab_token": "wrong"}, base_url=LOCAL).get("/api/runs").status_code == 401
    assert guarded.get("/healthz").status_code == 200


def test_the_knowledge_cards_are_browsable(tmp_path) -> None:
    from mixerlab.store import Store

    url = f"sqlite:///{tmp_path / 'empty.db'}"
    Store(url)  # a new, empty run database: the cards need no experiments
    web = TestClient(create_app(url), base_url=LOCAL)
    cards = web.get("/api/knowledge").json()
    assert len(cards) >= 40 and all({"id", "mechanism", "equation", "helps", "citation", "options"} <= set(c) for c in cards)
    noisy = web.get("/api/knowledge", params={"ability": "noisy_recall"}).json()
    assert noisy and all("noisy_recall" in c["helps"] for c in noisy) and len(noisy) < len(cards)
    decay = web.get("/api/knowledge", params={"q": "forget gate decay"}).json()
    assert decay[0]["id"] in {"gated_deltanet", "gla", "hgrn", "rfa", "forgetting_transformer", "mamba2", "rwkv6"}
    one = web.get("/api/knowledge/gated_deltanet").json()
    assert "decay=data_dependent" in one["options"]
    page = web.get("/knowledge", params={"ability": "selective_copy"})
    assert page.status_code == 200 and 'id="card-deltanet"' in page.text and "helps selective_copy" in page.text
    assert "evidence: selective copy 100" in page.text and "unmeasured" in page.text  # each claim says what it rests on
    assert 'id="card-mamba"' not in page.text  # published MAD tables put Mamba lowest on selective copy
