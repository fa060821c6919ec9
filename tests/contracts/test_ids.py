"""Deterministic ids must equal ``uuid.uuid5`` exactly: stored ids would change otherwise."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from contracts.ids import uuid5_text


@given(namespace=st.uuids(), name=st.text())
def test_uuid5_text_is_uuid5(namespace: uuid.UUID, name: str) -> None:
    assert uuid5_text(namespace, name) == str(uuid.uuid5(namespace, name))


def test_known_value() -> None:
    # RFC 4122 appendix B's DNS namespace, as every uuid5 implementation computes it.
    assert uuid5_text(uuid.NAMESPACE_DNS, "python.org") == "886313e1-3b8a-5372-9b90-0c9aee199e5d"
