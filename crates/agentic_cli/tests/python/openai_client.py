"""The `openai` Python package talking to a lion agent through `lion serve`.

Usage: openai_client.py MODE [TEXT]; LION_URL, LION_TOKEN and LION_MODEL
name the server, its token and the agent (`agent:NAME`). Prints one JSON
object with what the client got.
"""

import json
import os
import sys

import openai

client = openai.OpenAI(
    base_url=os.environ["LION_URL"] + "/v1",
    api_key=os.environ["LION_TOKEN"],
    max_retries=0,
)
model = os.environ.get("LION_MODEL", "")
mode = sys.argv[1]
text = sys.argv[2] if len(sys.argv) > 2 else "Say hello."
# A client resends the whole conversation; lion takes the turn after the
# last assistant message, under the agent's own system prompt.
messages = [
    {"role": "system", "content": "a client's system prompt, ignored"},
    {"role": "user", "content": text},
]

if mode == "models":
    print(json.dumps({"models": [m.id for m in client.models.list()]}))
elif mode == "complete":
    reply = client.chat.completions.create(model=model, messages=messages)
    choice = reply.choices[0]
    print(json.dumps({
        "content": choice.message.content,
        "role": choice.message.role,
        "finish_reason": choice.finish_reason,
        "usage": reply.usage.model_dump() if reply.usage else None,
    }))
elif mode == "stream":
    stream = client.chat.completions.create(
        model=model,
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks, usage, finish = [], None, None
    for chunk in stream:
        if chunk.choices:
            if chunk.choices[0].delta.content:
                chunks.append(chunk.choices[0].delta.content)
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage.model_dump()
    print(json.dumps({"chunks": chunks, "usage": usage, "finish_reason": finish}))
elif mode == "errors":
    found = {}
    try:
        client.chat.completions.create(model="agent:nobody", messages=messages)
    except openai.NotFoundError as e:
        found["unknown_agent"] = {"status": e.status_code, "message": e.message}
    try:
        client.chat.completions.create(
            model=model,
            messages=messages,
            tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
        )
    except openai.BadRequestError as e:
        found["client_tools"] = {"status": e.status_code, "message": e.message}
    bad = openai.OpenAI(
        base_url=os.environ["LION_URL"] + "/v1", api_key="lion_wrong", max_retries=0
    )
    try:
        bad.chat.completions.create(model=model, messages=messages)
    except openai.AuthenticationError as e:
        found["wrong_key"] = {"status": e.status_code}
    print(json.dumps(found))
else:
    sys.exit(f"unknown mode {mode}")
