"""Protobuf messages as Triton's JSON spells them."""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor, json_format
from google.protobuf.message import Message

_INT64_TYPES = frozenset(
    {
        descriptor.FieldDescriptor.TYPE_INT64,
        descriptor.FieldDescriptor.TYPE_UINT64,
        descriptor.FieldDescriptor.TYPE_SINT64,
        descriptor.FieldDescriptor.TYPE_FIXED64,
        descriptor.FieldDescriptor.TYPE_SFIXED64,
    }
)


def message_to_dict(message: Message) -> dict[str, Any]:
    """A message as Triton's JSON has it (a model config, statistics): proto field names, every
    field, 64-bit integers as numbers. protobuf's JSON writes those as strings and its option to
    unquote them exists only from protobuf 7, so they are converted here, alike on every runtime."""
    doc: dict[str, Any] = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    _unquote_int64(message.DESCRIPTOR, doc)
    return doc


def _unquote_int64(message: descriptor.Descriptor, doc: dict[str, Any]) -> None:
    for name, value in doc.items():
        field = message.fields_by_name.get(name)
        if field is None:
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            entry = field.message_type.fields_by_name["value"]
            for key, item in value.items():
                value[key] = _unquoted(entry, item)
        elif isinstance(value, list):
            doc[name] = [_unquoted(field, item) for item in value]
        else:
            doc[name] = _unquoted(field, value)


def _unquoted(field: descriptor.FieldDescriptor, value: Any) -> Any:
    if field.message_type is not None:
        _unquote_int64(field.message_type, value)
        return value
    return int(value) if field.type in _INT64_TYPES else value
