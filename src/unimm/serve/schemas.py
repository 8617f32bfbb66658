"""Request and response bodies of the OpenAI-compatible endpoints (the subset unimm serves).

Every request model forbids unknown fields (`extra="forbid"`): a misspelt option is a 400 that
names it, never silently ignored. Types are strict (`strict=True`): JSON's own types only, so
`"n": "2"`, `"n": true` and `"stream": "yes"` are 400s, not coerced (an integer is accepted
where a number is); NaN and infinities are refused. Bounds that depend on server settings
(n, max_tokens, image pixels) are checked in `app.py`, where the settings live.
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from ..pipeline import MAX_PROMPT_CHARS


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


# ---- chat ------------------------------------------------------------------------------------
class ImageURL(Strict):
    url: str = Field(description="A data URL (data:image/png;base64,...); the server fetches nothing.")
    detail: Optional[Literal["auto", "low", "high"]] = None


class TextPart(Strict):
    type: Literal["text"]
    text: str


class ImagePart(Strict):
    type: Literal["image_url"]
    image_url: ImageURL


Part = Annotated[Union[TextPart, ImagePart], Field(discriminator="type")]


class Message(Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[Part], None] = None
    name: Optional[str] = None


class ChatRequest(Strict):
    model: Optional[str] = None
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    max_tokens: Optional[int] = Field(None, ge=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    seed: Optional[int] = Field(None, ge=0, lt=2**32)
    n: int = Field(1, ge=1, le=1, description="Choices per request: 1 (one answer).")
    user: Optional[str] = None


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatMessageOut
    finish_reason: Literal["stop", "length"] = "stop"


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ChatResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


# ---- images ----------------------------------------------------------------------------------
class ImageRequest(Strict):
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    model: Optional[str] = None
    n: int = Field(1, ge=1)
    size: Optional[str] = Field(None, description='"auto" or the model\'s own size, e.g. "32x32".')
    response_format: Optional[Literal["b64_json"]] = "b64_json"
    seed: Optional[int] = Field(None, ge=0, lt=2**32)
    guidance: Optional[float] = Field(None, ge=0, le=20)
    temperature: Optional[float] = Field(None, ge=0, le=2)
    user: Optional[str] = None


EDIT_FIELDS = ("image", "prompt", "model", "n", "size", "response_format", "seed", "guidance",
               "temperature", "user")


class ImageData(BaseModel):
    b64_json: str
    revised_prompt: Optional[str] = None


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]


# ---- the rest --------------------------------------------------------------------------------
class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "unimm"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[str] = None


class ErrorResponse(BaseModel):
    error: ErrorBody
