"""POST /v1/chat/completions: text + image_url (data URL) parts -> text; `stream` = SSE.

Notable choices:
- Conversations: a model turn sees one image and one question. The question is the last user
  message's text; the image is the most recent image anywhere in the conversation, so a
  follow-up without an image is about the last one shown. Earlier text is not fed to the model:
  it was trained on single turns and answers worse with a transcript in front of the question.
- Streaming goes through the batcher like any answer: the job's `on_token` hands each decoded
  token to the event loop, and `Pipeline.text_stream` turns them into the pieces that add up
  to the non-streamed answer.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from ...data.images import ImageError
from ...pipeline import InputError
from ..batcher import Overloaded
from ..deps import Service, ServiceDep
from ..errors import ERRORS, ApiError, log
from ..inputs import decode_data_url
from ..schemas import ChatChoice, ChatMessageOut, ChatRequest, ChatResponse, Usage

router = APIRouter()


@router.post("/v1/chat/completions", response_model=ChatResponse, responses=ERRORS)
async def chat(req: ChatRequest, svc: ServiceDep):
    s, pipe = svc.settings, svc.pipe
    svc.check_model(req.model)
    image, question = conversation(svc, req)
    max_new = req.max_completion_tokens or req.max_tokens or s.max_tokens
    if max_new > s.max_tokens:
        raise ApiError(400, f"max_tokens {max_new} is over this server's limit of "
                       f"{s.max_tokens}", param="max_tokens")
    sam = svc.sampling(req.temperature, req.top_p, text=True)
    args = dict(max_new=max_new, sampling=sam, seed=req.seed)
    key = (max_new, sam)
    cid, now = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    if not req.stream:
        out = await svc.wait(svc.submit("answer", [(image, question)], args, key,
                                        req.seed is not None))
        text = out[0]
        n_out = len(pipe.count_tokens(text)) if text else 0
        n_in = len(pipe.count_tokens(question)) + pipe.image_tokens
        return ChatResponse(id=cid, created=now, model=svc.model_id, usage=Usage(
            prompt_tokens=n_in, completion_tokens=n_out, total_tokens=n_in + n_out),
            choices=[ChatChoice(message=ChatMessageOut(content=text),
                                finish_reason="length" if n_out >= max_new else "stop")])
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    fut = svc.submit("answer", [(image, question)], args, key, req.seed is not None,
                     on_token=lambda _row, tok: loop.call_soon_threadsafe(events.put_nowait, tok))
    fut.add_done_callback(lambda f: events.put_nowait(None))
    return StreamingResponse(stream_chat(svc, events, fut, cid, now),
                             media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def conversation(svc: Service, req: ChatRequest):
    """(latest image, last user question) of a conversation."""
    s = svc.settings
    if len(req.messages) > s.max_messages:
        raise ApiError(400, f"{len(req.messages)} messages; at most {s.max_messages}",
                       param="messages")
    urls = [(i, p.image_url.url) for i, m in enumerate(req.messages)
            if isinstance(m.content, list) for p in m.content if p.type == "image_url"]
    if len(urls) > s.max_images:
        raise ApiError(400, f"{len(urls)} images in the conversation; at most "
                       f"{s.max_images}", param="messages")
    users = [m for m in req.messages if m.role == "user"]
    if not users or req.messages[-1].role != "user":
        raise ApiError(400, "the last message must come from the user", param="messages")
    c = users[-1].content
    text = c if isinstance(c, str) else " ".join(p.text for p in (c or []) if p.type == "text")
    question = svc.check_text(text or "", "messages")
    if not urls:
        raise ApiError(400, "this model answers questions about an image: include an "
                       "image_url part (a data URL) in the conversation", param="messages")
    i, url = urls[-1]
    try:
        data = decode_data_url(url, s.max_body_bytes)
    except ImageError as e:
        raise ApiError(400, str(e), param=f"messages.{i}.content", code="invalid_image") from None
    return svc.image_from(data, "image_url"), question.strip()


async def stream_chat(svc: Service, events: asyncio.Queue, fut: asyncio.Future, cid: str,
                      now: int):
    """SSE: a role chunk, one content chunk per decoded piece of text, the finish chunk,
    [DONE]. Whatever goes wrong after the first chunk (a timeout, the batch failing, a
    bug) ends the stream with an OpenAI error event, then [DONE]: never a cut connection."""
    timeout = svc.settings.request_timeout_s

    def chunk(delta: dict, finish=None) -> str:
        return "data: " + json.dumps({
            "id": cid, "object": "chat.completion.chunk", "created": now, "model": svc.model_id,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}) + "\n\n"

    def error_event(message: str, type_: str, code: str | None = None) -> str:
        return "data: " + json.dumps({"error": {"message": message, "type": type_,
                                                "param": None, "code": code}}) + "\n\n"

    text = svc.pipe.text_stream()
    yield chunk({"role": "assistant", "content": ""})
    deadline = loop_time() + timeout
    try:
        while True:
            try:
                tok = await asyncio.wait_for(events.get(), max(0.0, deadline - loop_time()))
            except asyncio.TimeoutError:
                fut.cancel()
                raise ApiError(504, f"the request took longer than {timeout:g} s",
                               "timeout_error", code="timeout") from None
            if tok is None:
                break
            piece = text.push(tok)
            if piece:
                yield chunk({"content": piece})
        rest = text.finish(fut.result()[0])                  # raises what the batch raised
        if rest:
            yield chunk({"content": rest})
        yield chunk({}, "stop")
    except ApiError as e:
        yield error_event(e.message, e.type, e.code)
    except (InputError, ImageError, Overloaded) as e:
        yield error_event(str(e), "invalid_request_error")
    except Exception:                                        # noqa: BLE001 - told, not cut
        log.exception("streamed request failed")
        yield error_event("internal server error", "server_error")
    yield "data: [DONE]\n\n"


def loop_time() -> float:
    return asyncio.get_running_loop().time()
