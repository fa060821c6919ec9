"""Write ``contracts/schemas/``: one JSON Schema file per event type, from
``contracts.schema.event_schema`` (a test fails if the files drift from it).

    python -m payhook.schema_files
"""

from __future__ import annotations

from pathlib import Path

import orjson

import contracts
from contracts.events import EVENT_TYPES
from contracts.schema import event_schema, schema_filename

SCHEMAS = Path(contracts.__file__).parent / "schemas"


def write_all(folder: Path = SCHEMAS) -> list[Path]:
    folder.mkdir(exist_ok=True)
    written = []
    for event_type in EVENT_TYPES:
        path = folder / schema_filename(event_type)
        path.write_bytes(orjson.dumps(event_schema(event_type), option=orjson.OPT_INDENT_2) + b"\n")
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write_all():
        print(path)
