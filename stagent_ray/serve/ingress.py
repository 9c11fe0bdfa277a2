"""An OpenAI-compatible front for the Policy: `/v1/models` and `/v1/chat/completions`.

Requests may carry `tools`; a generated `<tool_call>` block comes back as OpenAI
`tool_calls` with `finish_reason: "tool_calls"`, so any OpenAI client can drive the agent.
With an `api_key`, requests must send it as `Authorization: Bearer <key>`.
"""


import json
import secrets
import time
import uuid

from fastapi import FastAPI, HTTPException, Request
from ray import serve

from stagent_ray.models.chat_format import from_openai_messages

app = FastAPI()


@serve.deployment
@serve.ingress(app)
class OpenAIIngress:
    def __init__(self, policy, model_path: str, model_name: str = "stagent",
                 api_key=None, max_new_tokens: int = 512, agent=None):
        from stagent_ray.config import AgentConfig
        from stagent_ray.models.build import load_tokenizer
        from stagent_ray.models.formats import format_for

        self.policy, self.model_name = policy, model_name
        self.tokenizer = load_tokenizer(model_path)
        self.format = format_for(self.tokenizer, agent or AgentConfig())  # the model's own
        self.api_key = api_key or None
        self.max_new_tokens = max_new_tokens

    def _check_key(self, request: Request) -> None:
        if not self.api_key:
            return
        sent = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not secrets.compare_digest(sent, self.api_key):
            raise HTTPException(status_code=401, detail="invalid API key")

    @app.get("/v1/models")
    async def models(self, request: Request):
        self._check_key(request)
        return {"object": "list", "data": [{"id": self.model_name, "object": "model",
                                            "owned_by": "stagent-ray"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request):
        self._check_key(request)
        try:
            body = await request.json()
            messages = from_openai_messages(body["messages"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise HTTPException(status_code=400, detail=f"bad request: {exc}") from exc
        if body.get("stream"):
            raise HTTPException(status_code=400, detail="stream=true is not supported")
        tools = body.get("tools") or None
        prompt, _ = self.format.render_ids(messages, tools, add_generation_prompt=True)
        temperature = float(body.get("temperature", 1.0))
        sampling = {"temperature": temperature, "top_p": float(body.get("top_p", 1.0)),
                    "top_k": 0, "seed": body.get("seed"),
                    "max_new_tokens": int(body.get("max_tokens") or body.get(
                        "max_completion_tokens") or self.max_new_tokens),
                    "stop_token_ids": self.format.stop_ids}
        gen = await self.policy.generate_one.remote((prompt, sampling))
        ids = [i for i in gen["token_ids"] if i not in self.format.stop_ids]
        text = self.tokenizer.decode(ids, skip_special_tokens=False)
        parsed = self.format.parse(text, tools, max_calls=16)
        message = {"role": "assistant", "content": text}
        finish = "stop" if gen["finish_reason"] == "stop" else "length"
        if parsed.calls:
            text = self.format.canonical(text, parsed)
            head = text[:text.find("<tool_call>")].strip()
            message = {"role": "assistant", "content": head or None, "tool_calls": [
                {"id": f"call_{uuid.uuid4().hex[:12]}", "type": "function",
                 "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
                for c in parsed.calls]}
            finish = "tool_calls"
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
                "created": int(time.time()), "model": self.model_name,
                "choices": [{"index": 0, "message": message, "finish_reason": finish,
                             "logprobs": None}],
                "usage": {"prompt_tokens": len(prompt), "completion_tokens": len(ids),
                          "total_tokens": len(prompt) + len(ids)}}
