"""GET /v1/models (the one served model) and GET /health (status, queue depth, batching
counters; "shutting_down" once a graceful shutdown has begun)."""

from __future__ import annotations

from fastapi import APIRouter

from ..deps import ServiceDep
from ..schemas import ModelCard, ModelList

router = APIRouter()


@router.get("/v1/models", response_model=ModelList)
async def models(svc: ServiceDep):
    return ModelList(data=[ModelCard(id=svc.model_id, created=svc.created)])


@router.get("/health")
async def health(svc: ServiceDep):
    b, pipe = svc.batcher, svc.pipe
    return {"status": "shutting_down" if b.closed else "ok", "model": svc.model_id,
            "paradigm": pipe.paradigm_name, "image_size": pipe.image_size,
            "queue": dict(b.pending), "batches": b.stats}
