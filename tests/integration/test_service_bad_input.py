"""Every kind of bad input gets a 422/413 in the one error shape, naming the field and the limit,
and never disturbs other clients' requests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import RunningServer, assert_error, tiny_server_with

LIMITS = {"REWARD_MAX_ITEMS": "8", "REWARD_MAX_TEXT_CHARS": "200", "REWARD_MAX_BODY_BYTES": "4096"}
GOOD = {"prompt": "how do i boil an egg", "response": "put it in boiling water for eight minutes"}


limited_server = tiny_server_with(LIMITS)


def locs(error: dict) -> list[list]:
    return [detail["loc"] for detail in error["details"]]


@pytest.mark.parametrize(
    "body, loc",
    [
        ({"response": "x y z"}, ["body", "prompt"]),
        ({**GOOD, "prompt": ""}, ["body", "prompt"]),
        ({**GOOD, "prompt": 42}, ["body", "prompt"]),
        ({**GOOD, "response": ["a", "list"]}, ["body", "response"]),
        ({**GOOD, "alpha": 1.5}, ["body", "alpha"]),
        ({**GOOD, "alpha": -0.1}, ["body", "alpha"]),
        ({**GOOD, "beta": 2}, ["body", "beta"]),
        ({**GOOD, "alpha": 0, "beta": 0}, ["body"]),
        ({**GOOD, "clip": 0}, ["body", "clip"]),
        ({**GOOD, "clip": -1.0}, ["body", "clip"]),
        ({**GOOD, "normalize": "zscore"}, ["body", "normalize"]),
        ({**GOOD, "namespace": "../etc"}, ["body", "namespace"]),
        ({**GOOD, "normalise": "batch"}, ["body", "normalise"]),
    ],
)
def test_invalid_score_fields_are_named(limited_server: RunningServer, body: dict, loc: list) -> None:
    error = assert_error(httpx.post(f"{limited_server.url}/score", json=body), 422, "validation_error")
    assert loc in locs(error)


def test_out_of_range_values_report_their_limit(limited_server: RunningServer) -> None:
    error = assert_error(
        httpx.post(f"{limited_server.url}/score", json={**GOOD, "alpha": 2}), 422, "validation_error"
    )
    assert error["details"][0]["limit"] == {"le": 1.0}


def test_invalid_json_and_non_objects_are_refused(limited_server: RunningServer) -> None:
    headers = {"content-type": "application/json"}
    for body in (b'{"prompt": "a", ', b"not json", b"[1, 2]", b"NaN"):
        response = httpx.post(f"{limited_server.url}/score", content=body, headers=headers)
        assert_error(response, 422, "validation_error")
    nan = b'{"prompt": "a", "response": "b", "alpha": NaN}'
    assert_error(
        httpx.post(f"{limited_server.url}/score", content=nan, headers=headers), 422, "validation_error"
    )


@pytest.mark.parametrize(
    "body, loc",
    [
        ({}, ["body", "items"]),
        ({"items": []}, ["body", "items"]),
        ({"items": [{"prompt": "a"}]}, ["body", "items", 0, "response"]),
        ({"items": [GOOD, {"prompt": 1, "response": "b"}]}, ["body", "items", 1, "prompt"]),
        ({"items": "not a list"}, ["body", "items"]),
    ],
)
def test_invalid_batch_items_are_named_by_index(limited_server: RunningServer, body: dict, loc: list) -> None:
    error = assert_error(httpx.post(f"{limited_server.url}/score_batch", json=body), 422, "validation_error")
    assert loc in locs(error)


def test_too_many_items_names_the_configured_maximum(limited_server: RunningServer) -> None:
    response = httpx.post(f"{limited_server.url}/score_batch", json={"items": [GOOD] * 9})
    error = assert_error(response, 422, "validation_error")
    assert error["details"][0] == {"loc": ["body", "items"], "msg": "too many items", "limit": 8, "got": 9}


def test_too_long_texts_name_the_field_and_the_limit(limited_server: RunningServer) -> None:
    single = httpx.post(f"{limited_server.url}/score", json={**GOOD, "response": "x" * 201})
    assert assert_error(single, 422, "validation_error")["details"][0]["loc"] == ["body", "response"]
    items = [GOOD, {**GOOD, "prompt": "y" * 201}]
    error = assert_error(
        httpx.post(f"{limited_server.url}/score_batch", json={"items": items}), 422, "validation_error"
    )
    assert error["details"] == [
        {"loc": ["body", "items", 1, "prompt"], "msg": "text too long", "limit": 200, "got": 201}
    ]


def test_oversized_bodies_get_413_before_parsing(limited_server: RunningServer) -> None:
    huge = {"items": [{"prompt": "p" * 150, "response": "r" * 150}] * 20}  # > 4096 bytes
    error = assert_error(httpx.post(f"{limited_server.url}/score_batch", json=huge), 413, "payload_too_large")
    assert error["details"][0]["limit"] == 4096

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies while streaming
        yield b'{"items": ['
        for _ in range(40):
            yield b'{"prompt": "' + b"p" * 100 + b'", "response": "r"},'
        yield b"]}"

    streamed = httpx.post(
        f"{limited_server.url}/score_batch", content=chunks(), headers={"content-type": "application/json"}
    )
    assert_error(streamed, 413, "payload_too_large")


def test_unknown_routes_and_methods_use_the_error_shape(limited_server: RunningServer) -> None:
    assert_error(httpx.get(f"{limited_server.url}/nope"), 404, "not_found")
    assert_error(httpx.get(f"{limited_server.url}/score"), 405, "method_not_allowed")


# Valid JSON and a valid str for pydantic, but not encodable as UTF-8: the tokenizer refuses it. Such a
# request passes validation and is refused (422) when its text is tokenized at admission.
UNENCODABLE = json.dumps({"prompt": "how do i boil an egg", "response": "put it in \ud800 water"}).encode()


def test_bad_requests_never_fail_other_clients(limited_server: RunningServer) -> None:
    """Requests that fail after validation, sent together with innocent ones (same batching window):
    each fails alone with a 4xx, every innocent request gets its reward."""

    async def drive() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=limited_server.url, timeout=30) as client:
            good = [client.post("/score", json=GOOD) for _ in range(16)]
            invalid = [client.post("/score", json={**GOOD, "alpha": 9}) for _ in range(4)]
            headers = {"content-type": "application/json"}
            unencodable = [client.post("/score", content=UNENCODABLE, headers=headers) for _ in range(4)]
            return await asyncio.gather(*good, *invalid, *unencodable)

    responses = asyncio.run(drive())
    assert [r.status_code for r in responses[:20]] == [200] * 16 + [422] * 4
    assert [r.status_code for r in responses[20:]] == [422] * 4, responses[20].text
    assert httpx.get(f"{limited_server.url}/readyz").status_code == 200
