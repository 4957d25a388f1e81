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

# response_format json_schema (OpenAI's wrapper shape): the content is JSON
# that has the schema's fields and types.
person = {"type": "object", "additionalProperties": False, "required": ["name", "age"],
          "properties": {"name": {"type": "string", "maxLength": 20},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120}}}
r = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "Describe a person."}], temperature=0, max_tokens=96,
    response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": person, "strict": True}})
strict(ChatCompletion, r)
value = json.loads(r.choices[0].message.content)
check(set(value) == {"name", "age"} and isinstance(value["name"], str) and len(value["name"]) <= 20
      and isinstance(value["age"], int) and 0 <= value["age"] <= 120, f"response_format json_schema: {value}")
r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Return {\"ok\": true} as JSON."}],
                                   temperature=0, max_tokens=256, response_format={"type": "json_object"})
check(r.choices[0].finish_reason == "stop", f"json_object: the object ends ({r.choices[0].message.content!r})")
check(isinstance(json.loads(r.choices[0].message.content), dict), "response_format json_object is an object")
try:
    client.chat.completions.create(model=model, messages=msgs, response_format={
        "type": "json_schema", "json_schema": {"name": "bad", "schema": {"type": "nonsense"}}})
    raise AssertionError("an invalid schema was accepted")
except openai.BadRequestError as e:
    check(e.param == "response_format", f"an invalid schema is a 400 naming response_format ({e.message})")

big = {"type": "object", "properties": {f"p{k}": {"type": "integer"} for k in range(8000)}}
try:
    client.chat.completions.create(model=model, messages=msgs, response_format={
        "type": "json_schema", "json_schema": {"name": "big", "schema": big}})
    raise AssertionError("a schema over the grammar bounds was accepted")
except openai.BadRequestError as e:
    check(e.param == "response_format", f"a schema too big to compile is a 400 naming response_format ({e.message[:80]})")

# Tools: a required call comes back as tool_calls, whole and streamed, with
# arguments that parse; the tool's result then gets an answer.
weather = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city"],
                   "properties": {"city": {"type": "string", "maxLength": 20}}}}}
ask = [{"role": "user", "content": "What is the weather in Paris?"}]
r = client.chat.completions.create(model=model, messages=ask, tools=[weather], tool_choice="required",
                                   temperature=0, max_tokens=96)
strict(ChatCompletion, r)
call = r.choices[0].message.tool_calls[0] if r.choices[0].message.tool_calls else None
check(r.choices[0].finish_reason == "tool_calls" and call is not None and call.function.name == "get_weather",
      "tools: a tool_calls message with finish_reason tool_calls")
args = json.loads(call.function.arguments)
check(set(args) == {"city"} and isinstance(args["city"], str), f"the call's arguments parse: {args}")
check(r.choices[0].message.content is None and call.id.startswith("call_"), "content is null; the call has an id")
chunks = list(client.chat.completions.create(model=model, messages=ask, tools=[weather], tool_choice="required",
                                             temperature=0, max_tokens=96, stream=True))
for c in chunks:
    strict(ChatCompletionChunk, c)
deltas = [t for c in chunks for ch in c.choices for t in (ch.delta.tool_calls or [])]
check(len(deltas) >= 2 and (deltas[0].id or "").startswith("call_") and deltas[0].function.name == "get_weather",
      "streamed: the first tool delta has the id and name")
check(all(d.function.name is None and d.id is None for d in deltas[1:]), "later deltas carry only arguments")
streamed_args = "".join(d.function.arguments or "" for d in deltas)
check(json.loads(streamed_args) == args, "the streamed arguments equal the whole reply's")
check([ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason] == ["tool_calls"],
      "streamed finish_reason is tool_calls")
follow = ask + [r.choices[0].message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": '{"temperature_c": 21, "sky": "clear"}'}]
r = client.chat.completions.create(model=model, messages=follow, tools=[weather], temperature=0, max_tokens=32)
strict(ChatCompletion, r)
check(r.choices[0].finish_reason in ("stop", "length", "tool_calls"), "a tool result gets an answer")

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
