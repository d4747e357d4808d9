"""/openapi.json (and so /docs) for the prediction routes, which are plain ASGI endpoints FastAPI does
not describe by itself: their request and response models, with the real feature names and types."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

REF = "#/components/schemas/{model}"
ERRORS = {
    "400": "Malformed JSON",
    "413": "Body or row count over the limit",
    "422": "Invalid input: each error names its field",
    "503": "No model is being served",
    "500": "Unexpected failure (generic body with the request id)",
}


def _component(schemas: dict[str, Any], model: type[BaseModel], mode: str) -> dict[str, str]:
    schema = model.model_json_schema(by_alias=True, ref_template=REF, mode=mode)
    schemas.update(schema.pop("$defs", {}))
    schemas[model.__name__] = schema
    return {"$ref": REF.format(model=model.__name__)}


def add_prediction_paths(
    openapi: dict[str, Any], routes: list[tuple[str, str, type[BaseModel], type[BaseModel]]]
) -> dict[str, Any]:
    """Describe each (path, summary, request model, response model) as a POST in `openapi`."""
    schemas = openapi.setdefault("components", {}).setdefault("schemas", {})
    for path, summary, request, response in routes:
        responses: dict[str, Any] = {
            "200": {
                "description": "Predicted",
                "content": {"application/json": {"schema": _component(schemas, response, "serialization")}},
            }
        }
        responses.update({code: {"description": text} for code, text in ERRORS.items()})
        openapi.setdefault("paths", {})[path] = {
            "post": {
                "summary": summary,
                "operationId": path.strip("/"),
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _component(schemas, request, "validation")}},
                },
                "responses": responses,
            }
        }
    return openapi
