"""Admin endpoints: add, update, roll back and remove bricks of the running server's library.

    POST   /admin/bricks                 {"path": "...", "mode": "auto"|"add"|"update"}
    POST   /admin/bricks/{id}/rollback   ?to=N
    DELETE /admin/bricks/{id}            ?version=N

They need the admin key (separate from the API key) and an admin folder: a brick folder is taken only from
under that folder (after resolving symlinks). Each change runs between batches (the runner's lock) and makes
routing follow at once (`Orchestrator.add_brick` / `update_brick` / `rollback_brick` / `remove_brick`).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

try:
    from fastapi import APIRouter, Depends, Query
except ImportError as e:  # pragma: no cover (part of the serve extra)
    from bricks.errors import MissingExtraError

    raise MissingExtraError("the HTTP server needs fastapi and uvicorn: pip install 'brickwork[serve]'") from e

from orchestrator.integrations.server.config import APIError, ServerConfig
from orchestrator.integrations.server.middleware import bearer_check
from orchestrator.integrations.server.runner import Runner
from orchestrator.integrations.server.schemas import AdminBrickRequest, AdminBrickResponse

__all__ = ["admin_router", "resolve_admin_path"]


def resolve_admin_path(config: ServerConfig, path: str) -> Path:
    """`path` (absolute, or relative to the admin folder) resolved; 403 when it is not under the admin folder."""
    assert config.admin_folder is not None
    root = config.admin_folder.resolve()
    candidate = Path(path)
    candidate = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if candidate == root or not candidate.is_relative_to(root):
        raise APIError(403, f"path {path!r} is not inside the admin folder", type="permission_error",
                       code="path_not_allowed", param="path")
    if not candidate.is_dir():
        raise APIError(400, f"path {path!r} is not a brick folder", param="path", code="not_a_folder")
    return candidate


def admin_router(config: ServerConfig, runner_of) -> APIRouter:
    """The /admin routes; `runner_of()` gives the server's Runner (its orchestrator and lock)."""

    def enabled() -> None:
        if config.admin_key is None or config.admin_folder is None:
            raise APIError(403, "admin endpoints are off: start the server with --admin-key and --admin-folder",
                           type="permission_error", code="admin_disabled")

    router = APIRouter(prefix="/admin", dependencies=[Depends(enabled),
                                                     Depends(bearer_check(lambda: config.admin_key, "admin key"))])

    async def locked(fn):
        runner: Runner = runner_of()

        def call():
            with runner.lock:
                return fn(runner.orc)

        try:
            return await asyncio.to_thread(call)
        except KeyError as e:
            raise APIError(404, str(e.args[0] if e.args else e), code="brick_not_found") from None

    def answer(orc, brick_id: str, version: int | None, action: str) -> AdminBrickResponse:
        library = orc.planner.library
        active = library.active_version(brick_id) if brick_id in library else None
        return AdminBrickResponse(id=brick_id, version=version, active=active, action=action)

    @router.post("/bricks", response_model=AdminBrickResponse)
    async def put_brick(body: AdminBrickRequest) -> AdminBrickResponse:
        """Add a brick folder (new id) or add it as a new version of its id (known id)."""
        folder = resolve_admin_path(config, body.path)

        def change(orc):
            from bricks.integrity import verify_brick_folder

            brick_id = verify_brick_folder(folder).id
            update = body.mode == "update" or (body.mode == "auto" and brick_id in orc.planner.library)
            brick = orc.update_brick(folder) if update else orc.add_brick(folder)
            return answer(orc, brick.id, brick.version, "updated" if update else "added")

        return await locked(change)

    @router.post("/bricks/{brick_id}/rollback", response_model=AdminBrickResponse)
    async def rollback(brick_id: str, to: int | None = Query(default=None, ge=1)) -> AdminBrickResponse:
        """Make the previous version of a brick (or version `to`) active again."""

        def change(orc):
            brick = orc.rollback_brick(brick_id, to)
            return answer(orc, brick.id, brick.version, "rolled_back")

        return await locked(change)

    @router.delete("/bricks/{brick_id}", response_model=AdminBrickResponse)
    async def remove(brick_id: str, version: int | None = Query(default=None, ge=1)) -> AdminBrickResponse:
        """Remove a brick (every version, or one)."""

        def change(orc):
            orc.remove_brick(brick_id, version)
            return answer(orc, brick_id, version, "removed")

        return await locked(change)

    return router
