"""The generated Python SDK module imports on its own and round-trips every entity's wire form."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import importlib.util
import sys
import textwrap
import typing
from decimal import Decimal

import pytest

from fieldsync.codegen import GenerationError, render_all
from fieldsync.codegen.python_sdk import class_name
from fieldsync.defs import build_model


@contextlib.contextmanager
def load_module(text: str, tmp_path, name: str):
    """Import `text` as module `name` from a file (registered while in use: dataclasses and
    typing.get_type_hints resolve string annotations through sys.modules)."""
    path = tmp_path / f"{name}.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[name]


@pytest.fixture(scope="module")
def models(rendered, tmp_path_factory):
    with load_module(rendered["sdk/python/fieldsync_models.py"], tmp_path_factory.mktemp("sdk"),
                     "fieldsync_models_under_test") as module:
        yield module


def test_module_metadata(models, example_model):
    assert models.APP == "field_force"
    assert models.SCHEMA_VERSION == example_model.schema_version
    assert models.FINGERPRINT == example_model.fingerprint()
    assert list(models.ENTITIES) == list(example_model.entity_names)
    assert set(models.__all__) >= {"ENTITIES", "Order", "OrderLine", "OrderStatus"}
    assert all(hasattr(models, name) for name in models.__all__)


def test_every_entity_round_trips_its_wire_form(models, example_model, make_row):
    for entity in example_model.entities:
        cls = models.ENTITIES[entity.name]
        assert cls.ENTITY == entity.name
        for n in range(3):
            row = make_row(entity, n)
            record = cls.from_row(row)
            assert record.to_dict() == row, entity.name
            assert cls.from_row(record.to_dict()) == record


def test_wire_values_become_python_types(models, example_model, make_row):
    row = make_row(example_model.entity("order"), 1)
    order = models.Order.from_row(dict(row, total="1234.50", unknown_future_field=1))
    assert order.total == Decimal("1234.50") and isinstance(order.total, Decimal)
    assert order.ordered_at.tzinfo is not None and order.ordered_at.utcoffset() == dt.timedelta(0)
    assert order.to_dict()["total"] == "1234.50"
    expense = models.Expense.from_row(make_row(example_model.entity("expense"), 2))
    assert isinstance(expense.spent_on, dt.date) and expense.approved is True
    assert expense.details == {"km": 2, "tags": ["a", "b"], "ok": True}


def test_models_are_frozen_keyword_only_dataclasses_with_defaults(models):
    line = models.OrderLine(id="l1", order_id="o1", product_id="p1", quantity=2, unit_price=Decimal("3.10"))
    assert line.discount_pct == Decimal("0.00") and line.version == 0 and line.deleted is False
    with pytest.raises(dataclasses.FrozenInstanceError):
        line.quantity = 3
    with pytest.raises(TypeError):
        models.OrderLine("l1")
    with pytest.raises(TypeError, match="unit_price"):
        models.OrderLine(id="l1", order_id="o1", product_id="p1", quantity=2)


def test_type_hints_follow_the_field_types(models):
    hints = typing.get_type_hints(models.Order)
    assert hints["total"] == typing.Optional[Decimal]
    assert hints["ordered_at"] is dt.datetime
    assert hints["rep_id"] is str
    assert hints["status"] == typing.Optional[typing.Literal["draft", "submitted", "confirmed",
                                                             "delivered", "cancelled"]]
    assert typing.get_type_hints(models.Expense)["spent_on"] is dt.date
    assert typing.get_type_hints(models.Product)["active"] == typing.Optional[bool]
    assert typing.get_type_hints(models.Visit)["location"] == typing.Optional[dict[str, float]]


def test_docstrings_come_from_labels_and_descriptions(models, rendered):
    assert models.Prescription.__doc__.startswith("Prescription (transaction). A doctor's prescription")
    assert '"""Photo of the receipt' not in rendered["sdk/python/fieldsync_models.py"]
    assert '"""Receipt. Photo of the receipt, uploaded directly to the media store."""' in \
        rendered["sdk/python/fieldsync_models.py"]


APP = "app: edge\nschema_version: 3\n"
ROLES = "roles:\n  rep: {}\n"


def test_awkward_names_and_texts_still_give_a_valid_module(tmp_path):
    entity = textwrap.dedent('''\
        entity: from_row_holder
        kind: master
        label: 'Quotes """ and \\ backslash"'
        fields:
          from: {type: string, description: 'ends with a quote"'}
          datetime: {type: datetime}
          to_dict: {type: integer, default: 3}
          started: {type: date, default: "2026-01-02"}
          extra: {type: json, default: {a: [1, 2]}}
          kind: {type: enum, values: ["it's", 'say "hi"']}
        ''')
    model = build_model({"app.yaml": APP, "roles.yaml": ROLES, "masters/from_row_holder.yaml": entity})
    with load_module(render_all(model)["sdk/python/fieldsync_models.py"], tmp_path, "edge_models") as module:
        cls = module.FromRowHolder
        hints = typing.get_type_hints(cls)
    record = cls(id="x", from_="a", datetime_=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
    assert record.to_dict_ == 3 and record.started == dt.date(2026, 1, 2) and record.extra == {"a": [1, 2]}
    assert cls(id="y").extra is not cls(id="z").extra, "mutable defaults are not shared"
    wire = record.to_dict()
    assert wire["from"] == "a" and wire["datetime"] == "2026-01-01T00:00:00.000000Z" and wire["to_dict"] == 3
    assert cls.from_row(wire) == record
    assert typing.get_args(hints["kind"])[0] == typing.Literal["it's", 'say "hi"']
    assert hints["datetime_"] == typing.Optional[dt.datetime]
    assert 'Quotes """ and \\ backslash"' in cls.__doc__


def test_colliding_class_names_are_refused():
    order = "entity: order\nkind: transaction\nfields:\n  status: {type: enum, values: [a, b]}\n"
    order_status = "entity: order_status\nkind: master\nfields:\n  name: {type: string}\n"
    model = build_model({"app.yaml": APP, "roles.yaml": ROLES, "transactions/order.yaml": order,
                         "masters/order_status.yaml": order_status})
    with pytest.raises(GenerationError, match="OrderStatus"):
        render_all(model)


def test_class_names():
    assert class_name("price_list_item") == "PriceListItem"
    assert class_name("order") == "Order"


def test_phi_fields_stay_out_of_repr(models, example_model, make_row):
    row = dict(make_row(example_model.entity("prescription"), 4),
               patient_id="7d1e0000-0000-4000-8000-00000000beef", patient_name="Asha Rao",
               patient_dob="1980-07-09", diagnosis="Type 2 diabetes")
    record = models.Prescription.from_row(row)
    text = repr(record)
    assert row["dosage"] in text, "non-PHI fields are shown"
    for f in example_model.entity("prescription").phi_fields:
        assert f"{f.name}=" not in text
        assert row[f.name] not in text and "1980" not in text
    assert record.patient_name == row["patient_name"]
