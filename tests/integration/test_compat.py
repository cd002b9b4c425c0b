"""Trainer wire formats on the real server: OpenRLHF /get_reward, vLLM-style /classify, /v1/models.

Every reward is checked against what /score_batch answers for the pair the templated text splits into.
"""

from __future__ import annotations

import asyncio
import math

import httpx
import pytest

from tests.conftest import TINY_VERSION

QUESTIONS = ["how do i boil an egg", "what is a good song for guitar", "explain why the river is long"]
ANSWERS = ["put the egg in boiling water for eight minutes", "a short song with three chords", "water"]
HH_PROMPTS = [f"\n\nHuman: {q}\n\nAssistant:" for q in QUESTIONS]
CHATML_PROMPTS = [f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n" for q in QUESTIONS]
QUERIES = [p + a + "<|im_end|>\n<|endoftext|>" for p, a in zip(CHATML_PROMPTS, ANSWERS, strict=True)]
APPROX = {"rel": 1e-5, "abs": 1e-6}


def post(url: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, timeout=60)


@pytest.fixture(scope="module")
def expected(server_url: str) -> dict:
    """/score_batch's answer for the pairs the queries mean: HH prompt, bare answer."""
    items = [{"prompt": p, "response": a} for p, a in zip(HH_PROMPTS, ANSWERS, strict=True)]
    response = post(server_url, "/score_batch", {"items": items})
    assert response.status_code == 200, response.text
    return response.json()


def test_openrlhf_query_with_prompts_gets_the_rewards_of_its_responses(server_url, expected):
    response = post(
        server_url, "/get_reward", {"query": QUERIES, "prompts": CHATML_PROMPTS, "labels": [1, 2, 3]}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["rewards"] == pytest.approx(expected["rewards"], **APPROX)
    assert body["scores"] == body["rewards"]
    model_rewards = [item["model_reward"] for item in expected["items"]]
    assert body["extra_logs"]["model_reward"] == pytest.approx(model_rewards, **APPROX)


def test_openrlhf_query_without_prompts_is_split_at_the_assistant_turn(server_url, expected):
    body = post(server_url, "/get_reward", {"query": QUERIES}).json()
    assert body["rewards"] == pytest.approx(expected["rewards"], **APPROX)


def test_trailing_eos_and_pad_markers_do_not_change_the_reward(server_url):
    bare = post(server_url, "/get_reward", {"query": [CHATML_PROMPTS[0] + ANSWERS[0]]}).json()["rewards"]
    padded = CHATML_PROMPTS[0] + ANSWERS[0] + "<|im_end|><|endoftext|>" + "<|endoftext|>" * 5
    assert post(server_url, "/get_reward", {"query": [padded]}).json()["rewards"] == pytest.approx(
        bare, **APPROX
    )


def test_openrlhf_empty_query_gets_empty_lists_and_every_extra_logs_key(server_url):
    """OpenRLHF sends an empty query to every URL beyond the number of samples, then reads the keys."""
    response = post(server_url, "/get_reward", {"query": [], "prompts": [], "labels": []})
    assert response.status_code == 200
    empty_logs = {"model_reward": [], "heuristic_reward": []}
    assert response.json() == {"rewards": [], "scores": [], "extra_logs": empty_logs}


def test_a_query_that_cannot_be_split_is_refused_naming_it(server_url):
    queries = [QUERIES[0], "no template here", CHATML_PROMPTS[1], "still none"]
    response = post(server_url, "/get_reward", {"query": queries})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["type"] == "validation_error"
    assert [detail["loc"] for detail in error["details"]] == [["body", "query", 1], ["body", "query", 3]]
    assert "chat template" in error["details"][0]["msg"]


@pytest.mark.parametrize(("path", "field"), [("/get_reward", "query"), ("/v1/embeddings", "input")])
def test_a_too_long_text_is_refused_at_its_place_in_the_request(server_url, path, field):
    """The request has no `items`: the error names the text as the client sent it."""
    too_long = CHATML_PROMPTS[1] + "word " * 5000
    response = post(server_url, path, {field: [QUERIES[0], too_long]})
    assert response.status_code == 422, response.text
    details = response.json()["error"]["details"]
    assert [detail["loc"] for detail in details] == [["body", field, 1]]
    assert details[0]["msg"] == "text too long"


def test_an_empty_generation_is_scored_as_an_empty_response(server_url, expected):
    """A policy that stops at once (only EOS/pad after the prompt) gets a reward, not an error."""
    stopped = CHATML_PROMPTS[1] + "<|im_end|><|endoftext|><|endoftext|>"
    body = post(server_url, "/get_reward", {"query": [QUERIES[0], stopped]}).json()
    alone = post(server_url, "/score", {"prompt": HH_PROMPTS[1], "response": ""}).json()
    assert body["rewards"] == pytest.approx([expected["rewards"][0], alone["reward"]], **APPROX)
    assert alone["heuristic"]["words"] == 0
    assert alone["heuristic"]["length_penalty"] > 0 and alone["heuristic_reward"] < 1.0  # too short
    assert math.isfinite(alone["model_raw"])


def test_scoring_options_ride_on_the_url_query_string(server_url):
    namespace = "openrlhf-run-1"
    url = f"/get_reward?namespace={namespace}&normalize=running&clip=0.5"
    body = post(server_url, url, {"query": QUERIES}).json()
    assert all(-0.5 <= reward <= 0.5 for reward in body["rewards"])
    stats = httpx.get(f"{server_url}/v1/stats/{namespace}", timeout=10).json()
    assert stats["count"] == len(QUERIES)
    bad = post(server_url, "/get_reward?alpha=7", {"query": QUERIES})
    assert bad.status_code == 422 and bad.json()["error"]["details"][0]["loc"] == ["query", "alpha"]


@pytest.mark.parametrize("path", ["/classify", "/v1/classify"])
def test_classify_gives_the_sigmoid_of_the_reward_by_default(server_url, expected, path):
    response = post(server_url, path, {"model": "anything", "input": QUERIES})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list" and body["model"] == TINY_VERSION
    assert [item["index"] for item in body["data"]] == [0, 1, 2]
    assert all(item["num_classes"] == len(item["probs"]) == 1 for item in body["data"])
    sigmoids = [1 / (1 + math.exp(-reward)) for reward in expected["rewards"]]
    assert [item["probs"][-1] for item in body["data"]] == pytest.approx(sigmoids, **APPROX)
    assert body["usage"]["prompt_tokens"] > 0


@pytest.mark.parametrize("flag", ["use_activation", "activation"])
def test_classify_without_activation_gives_the_raw_reward(server_url, expected, flag):
    body = post(server_url, "/classify", {"model": "m", "input": QUERIES[1], flag: False}).json()
    assert body["data"][0]["probs"][-1] == pytest.approx(expected["rewards"][1], **APPROX)


def test_models_lists_the_live_version(server_url):
    body = httpx.get(f"{server_url}/v1/models", timeout=10).json()
    assert body["object"] == "list"
    assert [model["id"] for model in body["data"]] == [TINY_VERSION]


def test_openrlhf_whole_rollout_in_one_request_is_scored_past_max_items(server_url, expected):
    """OpenRLHF <= 0.9.0 sends the whole rollout (here 512 > max_items 256) in one request."""
    queries = QUERIES * 171  # 513 queries
    body = post(server_url, "/get_reward", {"query": queries}).json()
    assert body["rewards"] == pytest.approx(expected["rewards"] * 171, **APPROX)
    assert len(body["extra_logs"]["model_reward"]) == len(body["extra_logs"]["heuristic_reward"]) == 513


def test_a_huge_query_list_is_refused_before_splitting_with_a_small_body(server_url):
    response = post(server_url, "/get_reward", {"query": [""] * 500_000})
    assert response.status_code == 422
    assert len(response.content) < 1000
    error = response.json()["error"]
    assert error["details"] == [
        {"loc": ["body", "query"], "msg": "too many items", "limit": 4096, "got": 500_000}
    ]
    assert error["code"] == 422 and error["param"] == "query"


def test_many_unsplittable_queries_give_a_bounded_error_body(server_url):
    response = post(server_url, "/get_reward", {"query": ["no template here"] * 3000})
    assert response.status_code == 422
    error = response.json()["error"]
    assert len(error["details"]) == 20 and "3000 errors" in error["message"]
    assert len(response.content) < 10_000


def test_classify_takes_vllm_chat_form_messages(server_url, expected):
    messages = [{"role": "user", "content": QUESTIONS[2]}, {"role": "assistant", "content": ANSWERS[2]}]
    body = post(server_url, "/classify", {"model": "m", "messages": messages, "use_activation": False}).json()
    assert [item["probs"][-1] for item in body["data"]] == pytest.approx([expected["rewards"][2]], **APPROX)


@pytest.mark.parametrize("ids", [[1, 2, 3], [[1, 2], [3, 4]]])
def test_classify_refuses_token_ids_saying_why(server_url, ids):
    response = post(server_url, "/classify", {"model": "m", "input": ids})
    assert response.status_code == 422
    assert "policy's vocabulary" in response.json()["error"]["message"]


def test_embeddings_give_the_reward_where_verl_reads_it_from_sglang(server_url, expected):
    """verl's SGLang reward path: output["data"][-1]["embedding"][-1] is the reward."""
    for index, query in enumerate(QUERIES):
        body = post(server_url, "/v1/embeddings", {"model": "m", "input": query}).json()
        assert body["data"][-1]["embedding"][-1] == pytest.approx(expected["rewards"][index], **APPROX)
        assert body["object"] == "list" and body["data"][-1]["object"] == "embedding"


def test_models_retrieve_the_live_version_and_404_for_others(server_url):
    live = httpx.get(f"{server_url}/v1/models/{TINY_VERSION}", timeout=10)
    assert live.status_code == 200
    entry = live.json()
    assert entry["id"] == TINY_VERSION and entry["parent"] is None
    assert entry["permission"][0]["object"] == "model_permission"
    assert httpx.get(f"{server_url}/v1/models", timeout=10).json()["data"][0]["permission"]
    unknown = httpx.get(f"{server_url}/v1/models/gpt-4", timeout=10)
    assert unknown.status_code == 404
    assert unknown.json()["error"]["type"] == "not_found" and unknown.json()["error"]["code"] == 404


def test_score_and_score_batch_take_conversations_rendered_as_the_adapters_render_them(server_url, expected):
    conversations = [
        [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        for q, a in zip(QUESTIONS, ANSWERS, strict=True)
    ]
    single = post(server_url, "/score", {"messages": conversations[0]}).json()
    assert single["reward"] == pytest.approx(expected["rewards"][0], **APPROX)
    mixed = [{"messages": conversations[1]}, {"prompt": HH_PROMPTS[2], "response": ANSWERS[2]}]
    batch = post(server_url, "/score_batch", {"items": mixed}).json()
    assert batch["rewards"] == pytest.approx(expected["rewards"][1:], **APPROX)


def test_a_conversation_without_a_response_turn_is_refused_naming_the_item(server_url):
    items = [{"prompt": HH_PROMPTS[0], "response": "x"}, {"messages": [{"role": "user", "content": "hi"}]}]
    response = post(server_url, "/score_batch", {"items": items})
    assert response.status_code == 422
    assert "items.1.messages" in response.json()["error"]["message"]


def test_get_reward_has_its_own_body_limit_sized_for_a_rollout(server_url):
    """5 MiB: over max_body_bytes (4 MiB), so /score_batch answers 413; /get_reward reads it (and then
    refuses the texts for what they are)."""
    texts = ["x" * 20_000] * 262
    big_query = httpx.post(f"{server_url}/get_reward", json={"query": texts}, timeout=120)
    assert big_query.status_code == 422 and big_query.json()["error"]["type"] == "validation_error"
    items = [{"prompt": "p", "response": text} for text in texts]
    assert httpx.post(f"{server_url}/score_batch", json={"items": items}, timeout=120).status_code == 413


def test_a_full_queue_answers_trainer_routes_with_503_and_retry_after(tiny_model_store, server_factory):
    """verl never retries a 4xx: a trainer route that cannot queue says 503 (retried), not 429."""
    env = {"REWARD_QUEUE_SIZE": "4", "REWARD_MAX_WAIT_MS": "200", "REWARD_MAX_BATCH_SIZE": "64"}

    async def flood(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(
            base_url=url, timeout=60, limits=httpx.Limits(max_connections=64)
        ) as client:
            return await asyncio.gather(
                *(client.post("/classify", json={"input": QUERIES[:2]}) for _ in range(64))
            )

    with server_factory(tiny_model_store, env=env) as server:
        responses = asyncio.run(flood(server.url))
    refused = [r for r in responses if r.status_code != 200]
    assert refused and {r.status_code for r in refused} == {503}
    assert all(r.headers["retry-after"] == "1" and r.json()["error"]["type"] == "overloaded" for r in refused)
