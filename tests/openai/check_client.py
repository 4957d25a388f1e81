"""Checks `colloquy serve` with the official OpenAI Python client, unmodified.

Usage: check_client.py BASE_URL API_KEY  (the server must require API_KEY)

Every reply is validated strictly by the client's own pydantic models; every
failure raises, so the process exits non-zero.
"""
import json
import sys

import urllib.request
import openai
from openai.types import Completion, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk

base, key = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=120)
EXTRAS = {"session_id", "meta"}  # the fields colloquy adds (meta as llama-server does)


def strict(model, obj):
    """Validates a reply's JSON strictly against the client's model."""
    data = obj.model_dump(mode="json", exclude_unset=True) if hasattr(obj, "model_dump") else obj
    checked = model.model_validate(data, strict=True)
    extra = set((checked.model_extra or {}).keys()) - EXTRAS
    assert not extra, f"{model.__name__} has fields the client does not know: {extra}"
    return checked


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print("ok:", what)


# models.list()
models = client.models.list()
ids = [strict(Model, m).id for m in models.data]
check(ids == ["smollm2"], f"models.list() lists the served model ({ids})")
model = ids[0]

# A plain completion: its raw JSON validated by ChatCompletion.
msgs = [{"role": "user", "content": "Name a color."}]
raw = client.chat.completions.with_raw_response.create(model=model, messages=msgs, temperature=0, max_tokens=12)
strict(ChatCompletion, raw.http_response.json())
r = raw.parse()
check(r.id.startswith("chatcmpl-") and r.object == "chat.completion", "chat.completions.create: id and object")
check(r.choices[0].finish_reason in ("stop", "length"), "finish_reason is one of the client's literals")
check(r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, "usage adds up")
check(r.usage.prompt_tokens_details.cached_tokens is not None, "usage.prompt_tokens_details.cached_tokens")
answer = r.choices[0].message.content
check(bool(answer), f"an answer: {answer!r}")

# Streamed, with the usage chunk: every chunk validates, the text is the same.
stream = client.chat.completions.create(
    model=model, messages=msgs, temperature=0, max_tokens=12, stream=True, stream_options={"include_usage": True}
)
chunks = [strict(ChatCompletionChunk, c) for c in stream]
check(len(chunks) >= 4, f"stream=True yields chunks ({len(chunks)})")
check(chunks[0].choices[0].delta.role == "assistant", "the first delta carries the role")
text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
check(text == answer, "the streamed text equals the non-streamed answer (greedy)")
finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
check(len(finish) == 1 and finish[0].choices[0].finish_reason in ("stop", "length"), "one finish chunk")
check(chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0, "include_usage: a last chunk with the usage")
check(len({c.id for c in chunks}) == 1, "one id across the stream")

# Logprobs.
r = client.chat.completions.create(model=model, messages=msgs, temperature=0, max_tokens=4, logprobs=True, top_logprobs=3)
strict(ChatCompletion, r)
lp = r.choices[0].logprobs.content
check(len(lp) >= 1 and len(lp[0].top_logprobs) == 3, "logprobs with top_logprobs")
check(lp[0].top_logprobs[0].logprob >= lp[0].top_logprobs[1].logprob, "top_logprobs are most likely first")

# Plain text completions.
c = client.completions.create(model=model, prompt="The capital of France is", max_tokens=4, temperature=0)
strict(Completion, c)
check(c.object == "text_completion" and c.choices[0].text, "completions.create")

# A session: created over HTTP, then resumed by id through extra_body.
def http(method, path):
    req = urllib.request.Request(base + path, method=method, headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


sid = http("POST", "/v1/sessions")["id"]
t1 = client.chat.completions.create(
    model=model, messages=msgs, temperature=0, max_tokens=8, extra_body={"session_id": sid}
)
strict(ChatCompletion, t1)
t2 = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "And another?"}],
    temperature=0,
    max_tokens=8,
    extra_body={"session_id": sid},
)
strict(ChatCompletion, t2)
check(t2.usage.prompt_tokens_details.cached_tokens > 10, "a resumed session_id reads only its new messages")
shown = http("GET", f"/v1/sessions/{sid}")
check(len(shown["messages"]) == 4, "the session holds both turns")
check(shown["messages"][3]["content"] == t2.choices[0].message.content, "the stored answer is the reply")
# With the whole conversation resent (as stateless clients do), only the new part is added.
t3 = client.chat.completions.create(
    model=model,
    messages=[m for m in shown["messages"]] + [{"role": "user", "content": "Thanks."}],
    temperature=0,
    max_tokens=4,
    extra_body={"session_id": sid},
)
check(len(http("GET", f"/v1/sessions/{sid}")["messages"]) == 6, "a resent transcript is not duplicated")

# An over-long prompt: the client's typed exception, with the server's message.
try:
    client.chat.completions.create(model=model, messages=[{"role": "user", "content": "word " * 9000}], max_tokens=4)
    raise AssertionError("an over-long prompt was accepted")
except openai.BadRequestError as e:
    check(e.status_code == 400, "an over-long prompt is a BadRequestError (400)")
    check(e.code == "context_length_exceeded", f"its code is context_length_exceeded ({e.code})")
    check("--ctx-size" in e.message, "its message is readable and names the option")
    check(e.body.get("n_ctx") == 8192 and e.body.get("n_prompt_tokens", 0) > 8192, "n_ctx and n_prompt_tokens")

# n > 1: refused, naming the field.
try:
    client.chat.completions.create(model=model, messages=msgs, n=2)
    raise AssertionError("n=2 was accepted")
except openai.BadRequestError as e:
    check(e.param == "n", "n=2 is a BadRequestError naming param n")

# An unknown model.
try:
    client.chat.completions.create(model="gpt-9", messages=msgs)
    raise AssertionError("an unknown model was accepted")
except openai.NotFoundError as e:
    check(e.code == "model_not_found", "an unknown model is a NotFoundError")

# A bad key.
bad = openai.OpenAI(base_url=base + "/v1", api_key="wrong-key", max_retries=0)
try:
    bad.models.list()
    raise AssertionError("a bad key was accepted")
except openai.AuthenticationError as e:
    check(e.status_code == 401 and "--api-key" in e.message, "a bad key is an AuthenticationError with a readable message")

print("all openai client checks passed")
