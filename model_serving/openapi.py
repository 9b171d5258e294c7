"""The OpenAPI 3.1 description served at ``GET /openapi.json`` (a test keeps it equal to the app's routes)."""

from __future__ import annotations

from typing import Any

from common.labels import CLASS_NAMES


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


_PREDICTION = {
    "type": "object",
    "required": [
        "class_id",
        "class_name",
        "confidence",
        "top3",
        "unfamiliarity",
        "unfamiliar",
        "needs_review",
        "review_reason",
    ],
    "properties": {
        "class_id": {"type": "integer", "minimum": 0, "maximum": len(CLASS_NAMES) - 1},
        "class_name": {"type": "string", "enum": list(CLASS_NAMES)},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "top3": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "class_id": {"type": "integer"},
                    "class_name": {"type": "string"},
                    "confidence": {"type": "number"},
                },
            },
        },
        "unfamiliarity": {
            "type": ["number", "null"],
            "description": "how unlike any of the 10 classes the item is (higher: less like them); null for a version "
            "whose model does not compute the score",
        },
        "unfamiliar": {
            "type": "boolean",
            "description": "unfamiliarity above UNFAMILIAR_THRESHOLD (default: the version's own, chosen when it was "
            "trained): probably not one of the 10 classes; false for a version without the score",
        },
        "needs_review": {
            "type": "boolean",
            "description": "a person should look: unfamiliar, or confidence below REVIEW_THRESHOLD (default: the "
            "version's own, 0.7 without one)",
        },
        "review_reason": {
            "type": ["string", "null"],
            "enum": ["unfamiliar", "low_confidence", None],
            "description": "why needs_review (unfamiliar first when both hold); null when it is false",
        },
        "predicted_class": {
            "type": "integer",
            "description": "seed API compatibility: the same value as class_id (its clients read this field)",
        },
        "filename": {"type": ["string", "null"]},
    },
}

# Fields every /predict answer carries, the last two for the seed API's clients (docs/serving.md: compatibility).
_TIMING = {
    "model_name": {"type": "string"},
    "model_version": {"type": "string"},
    "processing_ms": {"type": "number", "description": "time inside the app, milliseconds"},
    "processing_time": {"type": "number", "description": "seed API compatibility: the same time, in seconds"},
    "requests_per_minute": {
        "type": "integer",
        "description": "seed API compatibility: requests the whole server answered in the last 60 seconds",
    },
}


def build_spec() -> dict[str, Any]:
    bad_upload = {
        "400": _error("no file, empty or undecodable image (codes no_file, empty_image, invalid_image)"),
        "413": _error(
            "body too large (body_too_large), too many form parts (too_many_parts), a form text field too large "
            "(form_field_too_large), too many pixels (image_too_large), the request's decoding budget "
            "(pixel_budget_exceeded, decode_time_exceeded), too many files (too_many_files)"
        ),
        "415": _error("image format not accepted (unsupported_format); PNG, JPEG, WebP and BMP are"),
        "503": _error("the model is not loaded yet (model_not_ready)"),
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Refund Item Classifier API",
            "version": "1.0.0",
            "description": "Classifies photos of returned items into the 10 Fashion-MNIST classes and flags "
            "uncertain ones (needs_review). Every error is JSON {error, message}. Compatibility with the seed "
            "API: /predict also answers predicted_class (= class_id), processing_time (seconds) and "
            "requests_per_minute; a ready /health says status 'healthy'; /metrics also answers cpu_usage and "
            "memory_usage (system-wide %) and requests_per_minute; /drift-status answers status, "
            "current_distribution and baseline_distribution (class shares). The seed's ks_statistic and p_value "
            "have no single meaning in a family of tests: read tests[].statistic and tests[].p_value_adjusted "
            "(docs/serving.md).",
        },
        "paths": {
            "/predict": {
                "post": {
                    "summary": "Classify one image (field `file`) or several in one forward pass (field `files`)",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "multipart/form-data": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "file": {"type": "string", "format": "binary"},
                                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "A single `file` -> one prediction object; `files` (or several "
                            "`file` parts) -> {predictions: [...]} in upload order. Any bad image rejects the "
                            "whole request (the message names it).",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "oneOf": [
                                            {"$ref": "#/components/schemas/SinglePrediction"},
                                            {"$ref": "#/components/schemas/BatchPrediction"},
                                        ]
                                    }
                                }
                            },
                        },
                        **bad_upload,
                    },
                }
            },
            "/health": {
                "get": {
                    "summary": "Liveness and readiness (model loaded and warmed up), model name/version/alias, uptime",
                    "responses": {
                        "200": {
                            "description": "ready",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}},
                        },
                        "503": {
                            "description": "alive but not ready",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}},
                        },
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Serving metrics, summed over all worker processes",
                    "parameters": [
                        {
                            "name": "format",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string", "enum": ["json", "prometheus"]},
                            "description": "default JSON; Prometheus text exposition with `prometheus` or "
                            "`Accept: text/plain`",
                        }
                    ],
                    "responses": {
                        "200": {
                            "description": "JSON summary (cpu_usage and memory_usage: system-wide %, "
                            "requests_per_minute and predict_requests_per_minute (POST /predict alone), latency "
                            "p50/p95/p99, requests and errors by endpoint and status, "
                            "predictions per class, confidence histogram, needs_review, unfamiliar and "
                            "unfamiliar_share (items called unfamiliar), unfamiliar_threshold, process CPU %/RSS, the "
                            "served model and its runtime) or Prometheus text",
                            "content": {
                                "application/json": {"schema": {"type": "object"}},
                                "text/plain": {"schema": {"type": "string"}},
                            },
                        },
                        "400": _error("unknown format"),
                    },
                }
            },
            "/drift-status": {
                "get": {
                    "summary": "Drift verdict of the recent serving window against the served version's reference",
                    "responses": {
                        "200": {
                            "description": "status ok | drift | insufficient_data, per-test statistic, p-value "
                            "(Bonferroni-adjusted too), effect size and reading (what it means when it fires), the "
                            "report's reading, window_size, reference_size, model version, "
                            "current_distribution and baseline_distribution (share of each predicted class in "
                            "the window and in the reference), unfamiliar_share and unfamiliar_items (the share of "
                            "the window's items the served version called unfamiliar; null without the score)",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["status", "window_size", "reference_size", "tests"],
                                    }
                                }
                            },
                        },
                        "503": _error("model not ready, or the served version has no drift reference"),
                    },
                }
            },
            "/openapi.json": {
                "get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3.1"}}}
            },
            "/admin/reload": {
                "post": {
                    "summary": "Have every worker re-resolve the model alias now, off the request (within ~1 s); "
                    "GET /health shows the outcome",
                    "security": [{"bearer": []}],
                    "responses": {
                        "202": {"description": "{requested, model_version (served now), error (last check's code)}"},
                        "401": _error("missing or wrong bearer token"),
                        "404": _error("disabled (ADMIN_TOKEN not set)"),
                    },
                }
            },
            "/labels": {
                "post": {
                    "summary": "Store people's labels: JSON {labels: [{key, sha256, label}], who, idempotency_key}",
                    "security": [{"bearer": []}],
                    "responses": {
                        "200": {
                            "description": "{submission, accepted, duplicate, blank, rejected: [{row, code, ...}]}"
                        },
                        "400": _error("not a labels body"),
                        "401": _error("missing or wrong bearer token (REVIEW_TOKEN)"),
                        "404": _error("disabled (REVIEW_TOKEN not set)"),
                        "422": _error("no row could be stored: {rejected: [...]} says why, row by row"),
                    },
                }
            },
            "/review": {"get": {"summary": "Review page (HTML)", "responses": {"200": {"description": "HTML page"}}}},
            "/review/queue": {
                "get": {
                    "summary": "A night's review queue and audit sample (?night=<date>/<run-id>; default the latest)",
                    "security": [{"bearer": []}],
                    "responses": {"200": {"description": "{night, nights, items}"}, "401": _error("bad token")},
                }
            },
            "/review/photo": {
                "get": {
                    "summary": "A queued item's photo (?key=)",
                    "security": [{"bearer": []}],
                    "responses": {"200": {"description": "the photo"}, "404": _error("no such photo")},
                }
            },
            "/review/input": {
                "get": {
                    "summary": "What the model saw of a photo (?key=): THE preprocessing's 28x28, as PNG",
                    "security": [{"bearer": []}],
                    "responses": {"200": {"description": "PNG"}, "404": _error("no such photo")},
                }
            },
            "/performance": {
                "get": {
                    "summary": "Accuracy over time: expected and measured per night, and the status",
                    "responses": {
                        "200": {"description": "{status, reason, nights: [...]}"},
                        "503": _error("no store or registry to read"),
                    },
                }
            },
            "/": {"get": {"summary": "Operator dashboard (HTML)", "responses": {"200": {"description": "HTML page"}}}},
            "/favicon.ico": {"get": {"summary": "Dashboard icon", "responses": {"200": {"description": "icon"}}}},
            "/dashboard/static/{filename}": {
                "get": {
                    "summary": "Dashboard assets (JS/CSS)",
                    "parameters": [{"name": "filename", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "responses": {"200": {"description": "asset"}, "404": _error("no such asset")},
                }
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Prediction": _PREDICTION,
                "SinglePrediction": {
                    "allOf": [
                        {"$ref": "#/components/schemas/Prediction"},
                        {"type": "object", "properties": _TIMING},
                    ]
                },
                "BatchPrediction": {
                    "type": "object",
                    "properties": {
                        "predictions": {"type": "array", "items": {"$ref": "#/components/schemas/Prediction"}},
                        "count": {"type": "integer"},
                        "needs_review": {"type": "integer"},
                        **_TIMING,
                    },
                },
                "Health": {
                    "type": "object",
                    "properties": {
                        "status": {
                            "type": "string",
                            "enum": ["healthy", "loading", "error"],
                            "description": "healthy = ready (the seed API's word); loading or error = not ready",
                        },
                        "live": {"type": "boolean"},
                        "ready": {"type": "boolean"},
                        "uptime_seconds": {"type": "number"},
                        "model": {
                            "type": ["object", "null"],
                            "description": "name, version, alias, run_id, runtime, ...; mlflow_url: the version's "
                            "page in the MLflow UI (MLFLOW_UI_URL)",
                        },
                    },
                },
                "Error": {
                    "type": "object",
                    "required": ["error", "message"],
                    "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
                },
            },
        },
    }
