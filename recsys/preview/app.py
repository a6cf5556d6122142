"""`python -m recsys preview`: look up any user's published homepage as the site gets it,
beside their recent history; switch between the live and any kept version; see what
changed for that user between two versions; browse the segment fallback pages; list
runs with status, gate and key metrics. Read-only; Jinja2 autoescapes every catalog
string; binds to 127.0.0.1 unless told otherwise."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, PlainTextResponse
from fastapi.templating import Jinja2Templates

from recsys.config import Config
from recsys.preview.data import PreviewData, page_diff

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


def create_app(cfg: Config) -> FastAPI:
    data = PreviewData(cfg)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        data.close()

    app = FastAPI(title="recsys preview", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)

    def render(request: Request, name: str, **ctx: Any) -> HTMLResponse:
        return TEMPLATES.TemplateResponse(request, name, {"database": data.database, **ctx})

    def kept_versions() -> list[dict[str, Any]]:
        return [r for r in data.runs() if r["kept"]]

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request) -> HTMLResponse:
        return render(request, "index.html", runs=data.runs(), live=data.live_key(), users=data.sample_users())

    @app.get("/user", response_class=HTMLResponse)
    def user(request: Request, user_id: str = Query(..., min_length=1), version: str = "live") -> HTMLResponse:
        page = data.page(user_id, version)
        run_key = page["run_key"] if page else (None if version == "live" else version)
        return render(
            request, "user.html", user_id=user_id, version=version, page=page, versions=kept_versions(),
            cards=data.cards(run_key), history=data.history(run_key or data.live_key(), user_id),
        )  # fmt: skip

    @app.get("/diff", response_class=HTMLResponse)
    def diff(request: Request, user_id: str, a: str, b: str = "live") -> HTMLResponse:
        pa, pb = data.page(user_id, a), data.page(user_id, b)
        cards = {**data.cards(pa["run_key"] if pa else None), **data.cards(pb["run_key"] if pb else None)}
        return render(request, "diff.html", user_id=user_id, a=a, b=b, pa=pa, pb=pb, rows=page_diff(pa, pb),
                      cards=cards, versions=kept_versions())  # fmt: skip

    @app.get("/segments", response_class=HTMLResponse)
    def segments(request: Request, version: str = "live") -> HTMLResponse:
        key = data.live_key() if version == "live" else version
        return render(request, "segments.html", version=version, run_key=key,
                      pages=data.segments(key) if key else {}, cards=data.cards(key), versions=kept_versions())  # fmt: skip

    @app.get("/healthz", response_class=PlainTextResponse)
    def healthz() -> str:
        return "ok"

    return app


def serve(cfg: Config, host: str = "127.0.0.1", port: int = 8765) -> None:
    import uvicorn

    uvicorn.run(create_app(cfg), host=host, port=port, log_level="info")
