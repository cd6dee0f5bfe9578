#!/usr/bin/env python3
"""Drive an OpenAI-compatible server with the official `openai` Python client.

The gateway promises that any OpenAI client works against it, and that each refusal
reaches the client as the client's own exception type, with the retry advice the client
obeys. This script checks that with the real library (`max_retries=0`, so that every
answer is seen as sent):

- success paths, against the Nexus gateway or a bare `nexus-mock`: models, chat, a
  stream with and without the usage chunk, legacy completions, embeddings;
- refusals, each checked only when its model (or flag) is given: 404 NotFoundError
  (`model_not_found`), 429 RateLimitError (`budget_exceeded`, `x-should-retry: false`),
  503 InternalServerError (`no_viable_backend`; `queue_timeout`/`queue_full` with
  `retry-after-ms`), 502 InternalServerError (`upstream_error`), 400 BadRequestError
  (`invalid_request`), 401 AuthenticationError (`invalid_api_key`); the decision object
  under `error.nexus` where the gateway sends one.

Every option can also come from the environment (NEXUS_BASE_URL, NEXUS_CHAT_MODEL, ...,
the option's name in upper case with NEXUS_ in front). Prints one line per check and
closes with "N passed, N failed, N skipped"; exits 1 if any check failed, 2 if the
arguments are wrong.

    python3 openai_client.py --base-url http://127.0.0.1:8800/v1 --chat-model llama3:8b \\
        --embedding-model nomic-embed-text --nexus --unknown-model no-such-model
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Any, Callable, Optional

try:
    import openai
    from openai import OpenAI
except ImportError:  # pragma: no cover - depends on the machine
    print("openai_client.py: the `openai` package is missing: python3 -m pip install openai", file=sys.stderr)
    sys.exit(2)

ROUTING_HEADERS = (
    "x-nexus-backend",
    "x-nexus-model",
    "x-nexus-route-reason",
    "x-nexus-cost-estimate-usd",
    "x-nexus-privacy-zone",
    "x-nexus-budget-status",
    "x-request-id",
)


class Failed(Exception):
    """A check's expectation did not hold."""


def expect(condition: bool, what: str) -> None:
    if not condition:
        raise Failed(what)


class Run:
    """Runs checks, one line each, and counts them."""

    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0
        self.skipped = 0

    def check(self, name: str, needs: Any, body: Callable[[], None]) -> None:
        if not needs:
            self.skipped += 1
            print(f"skip {name}")
            return
        try:
            body()
        except Failed as e:
            self.failed += 1
            print(f"FAIL {name}: {e}")
        except Exception as e:  # an unexpected exception is a failure, shown whole
            self.failed += 1
            print(f"FAIL {name}: {type(e).__name__}: {e}")
            traceback.print_exc(file=sys.stdout)
        else:
            self.passed += 1
            print(f"ok   {name}")


def error_body(err: openai.APIStatusError) -> dict:
    """The `error` object of a refusal (the client keeps the inner object as `body`)."""
    body = err.body
    expect(isinstance(body, dict), f"the error body is an object, got {body!r}")
    return body  # type: ignore[return-value]


def refused(
    call: Callable[[], Any],
    exception: type,
    status: int,
    code: str | tuple,
    *,
    decision: bool = False,
    headers: Optional[dict] = None,
    header_present: tuple = (),
    param: Optional[str] = None,
) -> openai.APIStatusError:
    """Calls `call`, which must raise `exception` with this status and code."""
    try:
        call()
    except exception as err:
        expect(isinstance(err, openai.APIStatusError), f"{type(err).__name__} is an APIStatusError")
        expect(err.status_code == status, f"status {status}, got {err.status_code}")
        codes = code if isinstance(code, tuple) else (code,)
        expect(err.code in codes, f"code {code}, got {err.code!r} ({err.message})")
        body = error_body(err)
        for key in ("message", "type", "code", "param"):
            expect(key in body, f"error.{key} is present: {body}")
        if param is not None:
            expect(err.param == param, f"param {param!r}, got {err.param!r}")
        if decision:
            nexus = body.get("nexus")
            expect(isinstance(nexus, dict), f"error.nexus holds the decision: {body}")
            expect(nexus.get("decision") in ("reject", "queue"), f"a refusal's decision: {nexus}")
            expect(isinstance(nexus.get("rejections"), list), f"error.nexus.rejections is a list: {nexus}")
        for name, value in (headers or {}).items():
            got = err.response.headers.get(name)
            expect(got == value, f"header {name}: {value!r}, got {got!r}")
        for name in header_present:
            expect(err.response.headers.get(name) is not None, f"header {name} is present")
        return err
    except openai.APIStatusError as err:
        raise Failed(f"expected {exception.__name__}, got {type(err).__name__} {err.status_code}: {err.message}")
    raise Failed(f"expected {exception.__name__}, the call succeeded")


def main(argv: list[str]) -> int:
    def env(name: str, default: Optional[str] = None) -> Optional[str]:
        return os.environ.get("NEXUS_" + name.upper().replace("-", "_"), default)

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", default=env("base-url"), help="e.g. http://127.0.0.1:8800/v1")
    parser.add_argument("--api-key", default=env("api-key", "sk-nexus-test"))
    parser.add_argument("--chat-model", default=env("chat-model"), help="a model that answers chat and completions")
    parser.add_argument("--embedding-model", default=env("embedding-model"))
    parser.add_argument("--nexus", action="store_true", default=env("nexus") == "1",
                        help="the server is the Nexus gateway: check its routing headers")
    parser.add_argument("--unknown-model", default=env("unknown-model"), help="expect 404 model_not_found")
    parser.add_argument("--budget-model", default=env("budget-model"), help="expect 429 budget_exceeded")
    parser.add_argument("--unavailable-model", default=env("unavailable-model"), help="expect 503 no_viable_backend")
    parser.add_argument("--queued-model", default=env("queued-model"), help="expect 503 queue_timeout or queue_full")
    parser.add_argument("--broken-model", default=env("broken-model"), help="expect 502 upstream_error")
    parser.add_argument("--bad-request", action="store_true", default=env("bad-request") == "1",
                        help="expect 400 invalid_request for a max_tokens that is not a number")
    parser.add_argument("--wrong-key", action="store_true", default=env("wrong-key") == "1",
                        help="expect 401 invalid_api_key for a wrong key (tenants configured)")
    parser.add_argument("--timeout", type=float, default=float(env("timeout", "30")), help="seconds per request")
    args = parser.parse_args(argv)
    if not args.base_url:
        parser.error("--base-url (or NEXUS_BASE_URL) is required")

    client = OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0, timeout=args.timeout)
    chat_model = args.chat_model
    hello = [{"role": "user", "content": "Say hello."}]
    run = Run()
    print(f"openai {openai.__version__} against {args.base_url}")

    def models() -> None:
        ids = [m.id for m in client.models.list()]
        for wanted in (chat_model, args.embedding_model):
            expect(wanted is None or wanted in ids, f"{wanted} is listed in {ids}")

    def chat() -> None:
        raw = client.chat.completions.with_raw_response.create(model=chat_model, messages=hello, max_tokens=50)
        completion = raw.parse()
        content = completion.choices[0].message.content
        expect(isinstance(content, str) and content != "", f"a reply, got {content!r}")
        expect(completion.usage is not None and completion.usage.total_tokens > 0, f"usage, got {completion.usage}")
        if args.nexus:
            for name in ROUTING_HEADERS:
                expect(raw.headers.get(name) is not None, f"header {name} is present")

    def stream(include_usage: bool) -> Callable[[], None]:
        def check() -> None:
            options = {"stream_options": {"include_usage": True}} if include_usage else {}
            chunks = list(client.chat.completions.create(model=chat_model, messages=hello, stream=True, **options))
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            expect(text != "", "the stream carried content")
            usage_only = [c for c in chunks if not c.choices and c.usage is not None]
            if include_usage:
                expect(len(usage_only) == 1 and chunks[-1] is usage_only[0], "one usage chunk, last")
                expect(usage_only[0].usage.completion_tokens > 0, f"completion tokens, got {usage_only[0].usage}")
            else:
                expect(not usage_only, "no usage chunk when not asked for")
        return check

    def completions() -> None:
        completion = client.completions.create(model=chat_model, prompt="Say hello.", max_tokens=20)
        expect(completion.choices[0].text != "", "a completion")

    def embeddings() -> None:
        result = client.embeddings.create(model=args.embedding_model, input=["first", "second"])
        expect(len(result.data) == 2, f"two vectors, got {len(result.data)}")
        expect(len(result.data[0].embedding) > 0, "a non-empty vector")
        expect(result.usage.prompt_tokens > 0, f"prompt tokens, got {result.usage}")

    def ask(model: str) -> Callable[[], Any]:
        return lambda: client.chat.completions.create(model=model, messages=hello)

    run.check("models", True, models)
    run.check("chat", chat_model, chat)
    run.check("stream", chat_model, stream(False))
    run.check("stream with usage", chat_model, stream(True))
    run.check("completions", chat_model, completions)
    run.check("embeddings", args.embedding_model, embeddings)

    run.check("404 unknown model", args.unknown_model,
              lambda: refused(ask(args.unknown_model), openai.NotFoundError, 404, "model_not_found"))
    run.check("429 budget exceeded", args.budget_model,
              lambda: refused(ask(args.budget_model), openai.RateLimitError, 429, "budget_exceeded",
                              decision=True, headers={"x-should-retry": "false"}))
    run.check("503 no viable backend", args.unavailable_model,
              lambda: refused(ask(args.unavailable_model), openai.InternalServerError, 503, "no_viable_backend",
                              decision=True))
    run.check("503 queue timeout or full", args.queued_model,
              lambda: refused(ask(args.queued_model), openai.InternalServerError, 503, ("queue_timeout", "queue_full"),
                              header_present=("retry-after-ms",)))
    run.check("502 upstream error", args.broken_model,
              lambda: refused(ask(args.broken_model), openai.InternalServerError, 502, "upstream_error"))
    run.check("400 invalid request", args.bad_request and chat_model,
              lambda: refused(lambda: client.chat.completions.create(model=chat_model, messages=hello,
                                                                    max_tokens="lots"),  # type: ignore[arg-type]
                              openai.BadRequestError, 400, "invalid_request", param="max_tokens"))
    wrong = OpenAI(base_url=args.base_url, api_key="sk-wrong-key", max_retries=0, timeout=args.timeout)
    run.check("401 invalid api key", args.wrong_key and chat_model,
              lambda: refused(lambda: wrong.chat.completions.create(model=chat_model, messages=hello),
                              openai.AuthenticationError, 401, "invalid_api_key"))

    print(f"{run.passed} passed, {run.failed} failed, {run.skipped} skipped")
    return 1 if run.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
