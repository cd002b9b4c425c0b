"""Hostile payloads against the real server: each gets a defined answer in the one error shape (or a
defined reward), none reaches the queue when it breaks a limit, and the server keeps serving."""

from __future__ import annotations

import math
import select
import socket

import httpx
import pytest

from tests.conftest import RunningServer, assert_error, tiny_server_with

LIMITS = {
    "REWARD_MAX_BODY_BYTES": "65536",
    "REWARD_MAX_ITEMS": "16",
    "REWARD_MAX_TEXT_CHARS": "2000",
    "REWARD_BODY_TIMEOUT_S": "1",
}
J = "application/json"
JSON = {"content-type": J}
OK_PAIR = {"prompt": "How do I boil an egg?", "response": "Put it in boiling water for eight minutes."}


limited_server = tiny_server_with(LIMITS)


# (name, raw body, content type, expected status, expected error type)
RAW_CASES = [
    ("megabyte string", b'{"prompt": "' + b"a" * 1_000_000 + b'", "response": "x"}', J,
     413, "payload_too_large"),
    ("text over max_text_chars", b'{"prompt": "' + b"a" * 3000 + b'", "response": "x"}', J,
     422, "validation_error"),
    ("deeply nested JSON", b'{"prompt": ' + b"[" * 20000 + b"]" * 20000 + b', "response": "x"}',
     J, 400, "bad_request"),
    ("invalid UTF-8", b'{"prompt": "\xff\xfe\xfa", "response": "x"}', J, 400, "bad_request"),
    ("lone surrogate escape", b'{"prompt": "\\ud800", "response": "x"}', J,
     422, "validation_error"),
    ("NaN alpha", b'{"prompt": "a", "response": "b", "alpha": NaN}', J, 422, "validation_error"),
    ("Infinity clip", b'{"prompt": "a", "response": "b", "clip": Infinity}', J,
     422, "validation_error"),
    ("-Infinity beta", b'{"prompt": "a", "response": "b", "beta": -Infinity}', J,
     422, "validation_error"),
    ("5000-digit number", b'{"prompt": "a", "response": "b", "alpha": 1' + b"0" * 5000 + b"}", J,
     400, "bad_request"),
    ("truncated JSON", b'{"prompt": "a", "resp', J, 422, "validation_error"),
    ("JSON array body", b"[1, 2, 3]", J, 422, "validation_error"),
    ("empty body", b"", J, 422, "validation_error"),
    ("text/plain body", b'{"prompt": "a", "response": "b"}', "text/plain", 415, "unsupported_media_type"),
    ("form body", b"prompt=a&response=b", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
    ("XML body", b"<score><prompt>a</prompt></score>", "application/xml", 415, "unsupported_media_type"),
    ("number as prompt", b'{"prompt": 42, "response": "b"}', J, 422, "validation_error"),
    ("empty prompt", b'{"prompt": "", "response": "b"}', J, 422, "validation_error"),
    ("unknown field", b'{"prompt": "a", "response": "b", "normalise": "batch"}', J,
     422, "validation_error"),
    ("namespace path traversal", b'{"prompt": "a", "response": "b", "namespace": "../../etc"}',
     J, 422, "validation_error"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "body", "content_type", "status", "error_type"), RAW_CASES, ids=[case[0] for case in RAW_CASES]
)
def test_hostile_body_gets_a_defined_error(
    limited_server: RunningServer, name: str, body: bytes, content_type: str, status: int, error_type: str
) -> None:
    response = httpx.post(f"{limited_server.url}/score", content=body, headers={"content-type": content_type})
    assert_error(response, status, error_type)


def test_huge_item_count_is_refused_naming_the_limit(limited_server: RunningServer) -> None:
    response = httpx.post(f"{limited_server.url}/score_batch", json={"items": [OK_PAIR] * 17})
    error = assert_error(response, 422, "validation_error")
    assert error["details"][0]["limit"] == 16


def test_body_over_the_limit_without_content_length_is_refused(limited_server: RunningServer) -> None:
    chunks = (b'{"prompt": "', b"a" * 70_000, b'", "response": "x"}')
    response = httpx.post(f"{limited_server.url}/score", content=iter(chunks), headers=JSON)  # chunked
    assert_error(response, 413, "payload_too_large")


def raw_request(port: int, head: bytes, body_parts: list[bytes], pause_s: float) -> bytes:
    """Send `head`, then `body_parts` one per `pause_s` until the server answers; read until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        for part in body_parts:
            if select.select([sock], [], [], pause_s)[0]:  # the server answered
                break
            sock.sendall(part)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
        return reply


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_slow_loris_body_is_cut_off_by_the_body_limit(limited_server: RunningServer, framing: str) -> None:
    port = int(limited_server.url.rsplit(":", 1)[1])
    body = b'{"prompt": "a", "response": "' + b"x" * 40 + b'"}'
    if framing == "chunked":
        head_framing = b"Transfer-Encoding: chunked\r\n"
        parts = [b"1\r\n" + bytes([byte]) + b"\r\n" for byte in body]
    else:
        head_framing = b"Content-Length: %d\r\n" % len(body)
        parts = [bytes([byte]) for byte in body]
    head = b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + head_framing + b"\r\n"
    # one byte per 0.45 s would take over 30 s; the 1 s body limit answers long before. The pace keeps
    # the client's sends away from the deadline (0.9 s, then 1.35 s): a byte arriving just after the
    # server closed would make the kernel reset the connection, dropping the 408 before it is read.
    reply = raw_request(port, head, parts, pause_s=0.45)
    status_line, _, rest = reply.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 408"), reply[:300]
    assert b'"type":"request_timeout"' in rest


# texts that tokenize to (almost) nothing or to special tokens get a finite reward, like any other text
ODD_TEXTS = {
    "empty response": ("How do I boil an egg?", ""),
    "only whitespace": ("   ", "\n\t  \r\n"),
    "zero-width characters": ("\u200b\u200b", "\u200b\ufeff"),
    "NUL and control bytes": ("\x00\x01\x02", "\x07\x1b[31m"),
    "only special tokens": ("<pad><pad><cls>", "<sep> <unk> [CLS] [SEP] [PAD]"),
    "emoji and combining marks": ("\U0001f600" * 50, "e\u0301" * 200),
    "right-to-left text": ("\u202e\u0645\u0631\u062d\u0628\u0627", "\u05e9\u05dc\u05d5\u05dd"),
}


@pytest.mark.parametrize("name", list(ODD_TEXTS))
def test_odd_text_gets_a_finite_reward(limited_server: RunningServer, name: str) -> None:
    prompt, response = ODD_TEXTS[name]
    answer = httpx.post(f"{limited_server.url}/score", json={"prompt": prompt, "response": response})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    parts = ("reward", "model_raw", "heuristic_reward", "hybrid_reward")
    assert all(math.isfinite(body[key]) for key in parts)


def test_text_far_past_max_len_is_truncated_dropping_the_prompt_start(limited_server: RunningServer) -> None:
    tail = "please help me boil an egg for my long river train trip " * 25  # ~1400 chars, past 64 tokens
    starts = ("guitar chord song music ", "atom energy science history ")
    pairs = [{"prompt": start + tail, "response": "put it in water"} for start in starts]
    rewards = [httpx.post(f"{limited_server.url}/score", json=pair).json()["model_raw"] for pair in pairs]
    assert rewards[0] == pytest.approx(rewards[1], abs=1e-5)


def test_server_still_serves_after_the_hostile_inputs(limited_server: RunningServer) -> None:
    assert httpx.get(f"{limited_server.url}/readyz").status_code == 200
    assert httpx.post(f"{limited_server.url}/score", json=OK_PAIR).status_code == 200
    assert limited_server.process.poll() is None
