"""Code generation: the model -> text artifacts under `generated/` (pure, no Flask, DB or boto3).

    render_all(model, defs_label="entity_defs", templates_dir=None) -> {relative path: text}
    write_generated(files, out_dir) -> changed paths
    check_generated(files, out_dir) -> ["stale: p", "missing: p", "extra: p", ...] (empty: fresh)
    generate(defs_dir, out_dir, check=False) -> what `fieldsync generate [--check]` reports

Templates live in the repository's `templates/`; the OpenAPI document and JSON Schemas come
from `fieldsync.codegen.openapi` and `fieldsync.codegen.json_schema`.
"""

from fieldsync.codegen.output import check_generated, generate, write_generated
from fieldsync.codegen.render import DEFAULT_TEMPLATES_DIR, render_all
from fieldsync.errors import GenerationError

__all__ = [
    "DEFAULT_TEMPLATES_DIR", "GenerationError", "check_generated", "generate", "render_all",
    "write_generated",
]
