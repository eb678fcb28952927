"""Protobuf messages as the JSON Triton's HTTP endpoint answers with: field names as in the proto,
64-bit integers as JSON numbers (protobuf's own JSON writes them as strings, which perf_analyzer's
parser does not take), every scalar and list present even when zero or empty, enums by name."""

from __future__ import annotations

import base64
from typing import Any

from google.protobuf.descriptor import FieldDescriptor

__all__ = ["message_json"]

_F = FieldDescriptor


def message_json(message: Any) -> dict[str, Any]:
    """A message as JSON values; a sub-message or a oneof member only when set."""
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if _is_map(field):
            value_field = field.message_type.fields_by_name["value"]
            out[field.name] = {k: _scalar(value_field, v) for k, v in value.items()}
        elif field.is_repeated:
            out[field.name] = [_scalar(field, v) for v in value]
        elif field.type == _F.TYPE_MESSAGE or field.containing_oneof is not None:
            if message.HasField(field.name):
                out[field.name] = _scalar(field, value)
        else:
            out[field.name] = _scalar(field, value)
    return out


def _is_map(field: FieldDescriptor) -> bool:
    return field.type == _F.TYPE_MESSAGE and field.message_type.GetOptions().map_entry


def _scalar(field: FieldDescriptor, value: Any) -> Any:
    if field.type == _F.TYPE_MESSAGE:
        return message_json(value)
    if field.type == _F.TYPE_ENUM:
        known = field.enum_type.values_by_number.get(value)
        return known.name if known is not None else value
    if field.type == _F.TYPE_BYTES:
        return base64.b64encode(value).decode()
    return value
