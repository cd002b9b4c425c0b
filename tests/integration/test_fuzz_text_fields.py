"""Property-based fuzzing of every text field of every scoring endpoint, beside innocent requests.

Hypothesis generates arbitrary strings, unpaired UTF-16 surrogates, control characters and chat-marker-
heavy text; each goes (as raw JSON, "\\ud800"-style escapes included) into one text field of one endpoint
while innocent requests run at the same moment, so that they share micro-batches with it. No hostile
request gets a 5xx, every refusal has the one error shape, no innocent request fails, and /readyz stays
200. Bounded (MAX_EXAMPLES, derandomized) so that it runs in well under a minute on two busy cores.
"""

from __future__ import annotations

import concurrent.futures
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import RunningServer, start_server

MAX_EXAMPLES = 80
HH = "\n\nHuman: {}\n\nAssistant: {}"
ODD_CHARACTERS = [
    "\ud800",
    "\udc00",
    "\udbff",
    "\udfff",
    "\x00",
    "\x1b",
    "\x7f",
    "\u2028",
    "\ufeff",
    "\u200b",
]
MARKERS = [
    "<s>", "</s>", "<|im_start|>", "<|im_end|>", "user\n", "assistant\n", "\n\nHuman: ", "\n\nAssistant: ",
    "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "[INST]", "[/INST]", "<start_of_turn>",
    "<end_of_turn>", "<|user|>", "<|assistant|>", "<|end|>", "<sep>", "<cls>", "[SEP]", "[CLS]",
]  # fmt: skip
CHARACTER = st.one_of(st.characters(), st.sampled_from(ODD_CHARACTERS))
TEXT = st.one_of(
    st.text(CHARACTER, max_size=60),
    st.lists(st.one_of(st.sampled_from(MARKERS), st.text(CHARACTER, max_size=8)), max_size=24).map("".join),
    # an odd character spliced into ordinary text: the poison pill, in a third of the examples
    st.tuples(st.text(max_size=20), st.sampled_from(ODD_CHARACTERS), st.text(max_size=20)).map("".join),
)
GOOD_ITEM = {"prompt": "a", "response": "b"}
# every text field of every scoring endpoint: (path, text -> body)
FIELDS: dict[str, tuple[str, Callable[[str], dict]]] = {
    "score.prompt": ("/score", lambda t: {"prompt": t, "response": "fine"}),
    "score.response": ("/score", lambda t: {"prompt": "hi", "response": t}),
    "score_batch.prompt": ("/score_batch", lambda t: {"items": [GOOD_ITEM, {"prompt": t, "response": "c"}]}),
    "score_batch.response": ("/score_batch", lambda t: {"items": [{"prompt": "a", "response": t}]}),
    "get_reward.query": ("/get_reward", lambda t: {"query": [HH.format("hi", "ok"), t]}),
    "get_reward.templated": ("/get_reward", lambda t: {"query": [HH.format(t, t)]}),
    "get_reward.prompts": ("/get_reward", lambda t: {"query": [t + " answer"], "prompts": [t]}),
    "classify.input": ("/classify", lambda t: {"input": t}),
    "classify.templated": ("/classify", lambda t: {"input": HH.format("hi", t)}),
    "classify.list": ("/classify", lambda t: {"input": [HH.format("q", "a"), t]}),
}  # fmt: skip


@pytest.fixture(scope="module")
def fuzz_server(tiny_model_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    env = {"REWARD_MAX_WAIT_MS": "10", "REWARD_UNREADY_AFTER_FAILURES": "1", "REWARD_RELOAD_INTERVAL": "0"}
    with start_server(tiny_model_store, tmp_path_factory.mktemp("fuzz-text"), env=env) as server:
        yield server


@pytest.fixture(scope="module")
def clients() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        yield pool


def post_raw(url: str, body: dict) -> httpx.Response:
    content = json.dumps(body, ensure_ascii=True).encode()  # lone surrogates become \udXXX escapes
    return httpx.post(url, content=content, headers={"content-type": "application/json"}, timeout=60)


def innocent(url: str, index: int) -> httpx.Response:
    if index % 2:
        return httpx.post(
            f"{url}/score", json={"prompt": "How are you?", "response": "Fine, thanks."}, timeout=60
        )
    return httpx.post(f"{url}/classify", json={"input": HH.format("Name a colour.", "Blue.")}, timeout=60)


@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(field=st.sampled_from(sorted(FIELDS)), text=TEXT)
def test_any_text_in_any_field_is_answered_alone_and_never_fails_a_neighbour(
    fuzz_server: RunningServer, clients: concurrent.futures.ThreadPoolExecutor, field: str, text: str
) -> None:
    path, body = FIELDS[field]
    neighbours = [clients.submit(innocent, fuzz_server.url, i) for i in range(2)]
    hostile = post_raw(fuzz_server.url + path, body(text))
    assert hostile.status_code < 500, hostile.text
    if hostile.status_code >= 400:
        assert set(hostile.json()["error"]) == {"type", "message", "details"}
    assert [n.result().status_code for n in neighbours] == [200, 200]


def test_readiness_survives_the_fuzzing(fuzz_server: RunningServer) -> None:
    assert httpx.get(f"{fuzz_server.url}/readyz").status_code == 200
