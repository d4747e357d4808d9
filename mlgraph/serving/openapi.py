"""/openapi.json (and so /docs) for the service's routes (mlgraph.serving.core.ROUTES), which FastAPI does not
describe by itself: their request and response models, with the real feature names and types, and the
errors each may answer, described from the error-kind table (mlgraph.core.http_errors)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel

from mlgraph.serving.core import Route

REF = "#/components/schemas/{model}"


def _component(schemas: dict[str, Any], model: type[BaseModel], mode: str) -> dict[str, str]:
    schema = model.model_json_schema(by_alias=True, ref_template=REF, mode=mode)
    schemas.update(schema.pop("$defs", {}))
    schemas[model.__name__] = schema
    return {"$ref": REF.format(model=model.__name__)}


def add_route_paths(
    openapi: dict[str, Any], routes: Iterable[Route], models: Mapping[str, type[BaseModel]]
) -> dict[str, Any]:
    """Describe each route in `openapi`; `models` resolves a route's request and response model names."""
    schemas = openapi.setdefault("components", {}).setdefault("schemas", {})
    for route in routes:
        ok: dict[str, Any] = {"description": "OK"}
        if route.response is not None:
            schema = _component(schemas, models[route.response], "serialization")
            ok = {"description": "Predicted", "content": {"application/json": {"schema": schema}}}
        responses: dict[str, Any] = {"200": ok}
        for kind in route.refusals:
            entry = responses.setdefault(str(kind.status), {"description": ""})
            entry["description"] = "; ".join(filter(None, (entry["description"], f"{kind.name}: {kind.message}")))
        operation: dict[str, Any] = {"summary": route.summary, "operationId": route.name, "responses": responses}
        if route.request is not None:
            schema = _component(schemas, models[route.request], "validation")
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
        openapi.setdefault("paths", {}).setdefault(route.path, {})[route.method.lower()] = operation
    return openapi
