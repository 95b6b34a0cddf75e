"""SQL for the per-message hot path, composed once per database and statement shape.

peewee spends about 150 µs of Python composing a query and 90 µs building a thirty-field model;
at a thousand messages a second, with several queries each, that is the whole CPU budget. These
statements are plain parameterised SQL text, cached per shape, and their rows become model
instances directly, so a lookup by key costs about 15 µs. Values still go through each field's
`db_value` / `python_value`, so the stored form is exactly what peewee itself writes and reads.

Each shape's text is a `Shape`, which PostgreSQL prepares once per connection (`db.PostgresPool`):
parsing, analysing and planning the claim and record statements was 40% of the server's CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from typing import Any, TypeVar

import peewee

M = TypeVar("M", bound=peewee.Model)


class Shape(str):
    """The SQL text of a statement shape made here (not of a query composed by peewee): a connection that
    prepares statements prepares it on first use and from then on only executes it."""

    __slots__ = ()


def _quote(db: peewee.Database, name: str) -> str:
    return f"{db.quote[0]}{name}{db.quote[1]}"


def _table(db: peewee.Database, model: type[peewee.Model]) -> str:
    return _quote(db, model._meta.table_name)


def _column(db: peewee.Database, model: type[peewee.Model], field: str) -> str:
    return _quote(db, model._meta.fields[field].column_name)


def _all_columns(db: peewee.Database, model: type[peewee.Model]) -> str:
    """The model's columns by name, not `*`: a statement prepared on PostgreSQL keeps its result type when a
    migration adds a column (with `*` every execution would fail until the connection closed)."""
    return ", ".join(_column(db, model, name) for name in model._meta.sorted_field_names)


@lru_cache(maxsize=256)
def select_sql(db: peewee.Database, model: type[peewee.Model], where: tuple[str, ...],
               order_by: str = "", limit: int = 0) -> Shape:
    """SELECT every field ... WHERE each field of `where` equals a parameter."""
    sql = f"SELECT {_all_columns(db, model)} FROM {_table(db, model)} WHERE " + " AND ".join(
        f"{_column(db, model, name)} = {db.param}" for name in where)
    if order_by:
        sql += f" ORDER BY {_column(db, model, order_by)}"
    if limit:
        sql += f" LIMIT {int(limit)}"
    return Shape(sql)


@lru_cache(maxsize=256)
def select_in_sql(db: peewee.Database, model: type[peewee.Model], field: str, count: int,
                  order_by: tuple[str, ...] = ()) -> Shape:
    """SELECT every field ... WHERE `field` is one of `count` parameters."""
    sql = (f"SELECT {_all_columns(db, model)} FROM {_table(db, model)} WHERE {_column(db, model, field)} "
           f"IN ({', '.join([db.param] * count)})")
    if order_by:
        sql += " ORDER BY " + ", ".join(_column(db, model, name) for name in order_by)
    return Shape(sql)


@lru_cache(maxsize=256)
def insert_sql(db: peewee.Database, model: type[peewee.Model], fields: tuple[str, ...], rows: int = 1) -> Shape:
    """INSERT of `rows` rows (one statement, one round trip) with a parameter per field of each."""
    columns = ", ".join(_column(db, model, name) for name in fields)
    row = f"({', '.join([db.param] * len(fields))})"
    return Shape(f"INSERT INTO {_table(db, model)} ({columns}) VALUES {', '.join([row] * rows)}")


@lru_cache(maxsize=256)
def update_sql(db: peewee.Database, model: type[peewee.Model], fields: tuple[str, ...], where: tuple[str, ...],
               status_in: int = 0) -> Shape:
    """UPDATE ... SET fields WHERE each `where` field equals a parameter [AND status IN (n params)]."""
    assignments = ", ".join(f"{_column(db, model, name)} = {db.param}" for name in fields)
    condition = " AND ".join(f"{_column(db, model, name)} = {db.param}" for name in where)
    if status_in:
        condition += f" AND {_status_in(db, model, status_in)}"
    return Shape(f"UPDATE {_table(db, model)} SET {assignments} WHERE {condition}")


@lru_cache(maxsize=256)
def update_in_sql(db: peewee.Database, model: type[peewee.Model], fields: tuple[str, ...], key: str, count: int,
                  status_in: int = 0) -> Shape:
    """UPDATE ... SET fields WHERE `key` (a unique field) is one of `count` parameters [AND status IN (n params)]."""
    assignments = ", ".join(f"{_column(db, model, name)} = {db.param}" for name in fields)
    condition = f"{_column(db, model, key)} IN ({', '.join([db.param] * count)})"
    if status_in:
        condition += f" AND {_status_in(db, model, status_in)}"
    return Shape(f"UPDATE {_table(db, model)}{_by_unique_index(db, model, key)} SET {assignments} WHERE {condition}")


@lru_cache(maxsize=256)
def update_from_values_sql(db: peewee.Database, model: type[peewee.Model], fields: tuple[str, ...],
                           keys: tuple[str, ...], rows: int, status_in: int = 0) -> Shape:
    """PostgreSQL: one UPDATE for `rows` rows, each giving its own `fields` to the row its `keys` name, joined
    from a VALUES list (parameters per row: keys, then fields) [AND status IN (n params)]; RETURNING the first
    key of each row it changed. One statement where per-row UPDATEs cost a round trip and a plan each."""
    if not isinstance(db, peewee.PostgresqlDatabase):
        raise ValueError("UPDATE ... FROM (VALUES ...) is written for PostgreSQL")
    columns = keys + fields
    row = f"({', '.join([db.param] * len(columns))})"
    value = {name: f"v.{_column(db, model, name)}::{_sql_type(db, model, name)}" for name in columns}
    assignments = ", ".join(f"{_column(db, model, name)} = {value[name]}" for name in fields)
    condition = " AND ".join(f"t.{_column(db, model, name)} = {value[name]}" for name in keys)
    if status_in:
        condition += f" AND {_status_in(db, model, status_in, 't.')}"
    return Shape(f"UPDATE {_table(db, model)} AS t SET {assignments} "
                 f"FROM (VALUES {', '.join([row] * rows)}) AS v ({', '.join(_column(db, model, n) for n in columns)}) "
                 f"WHERE {condition} RETURNING t.{_column(db, model, keys[0])}")


@lru_cache(maxsize=256)
def claim_sql(db: peewee.Database, fields: tuple[str, ...], rows: int, status_in: int) -> Shape:
    """PostgreSQL: insert `rows` attempts (a parameter per field of each) and move each one's task to
    `processing` with the attempt's provider, rule and rule version while its status is one of `status_in`
    parameters, after one more parameter for `updated_at`: one statement, so one round trip and one commit.
    It returns the ids of the tasks it moved."""
    from engine.store.models import Attempt, Task

    if not isinstance(db, peewee.PostgresqlDatabase):
        raise ValueError("the one-statement claim is written for PostgreSQL")
    copied = ("provider", "rule", "rule_version")
    returning = ", ".join(_column(db, Attempt, name) for name in ("task_id", *copied))
    assignments = ", ".join(f"{_column(db, Task, name)} = c.{_column(db, Attempt, name)}" for name in copied)
    return Shape(f"WITH c AS ({insert_sql(db, Attempt, fields, rows)} RETURNING {returning}) "
                 f"UPDATE {_table(db, Task)} AS t SET {_column(db, Task, 'status')} = 'processing', {assignments}, "
                 f"{_column(db, Task, 'updated_at')} = {db.param} FROM c "
                 f"WHERE t.{_column(db, Task, 'task_id')} = c.{_column(db, Attempt, 'task_id')} "
                 f"AND {_status_in(db, Task, status_in, 't.')} "
                 f"RETURNING t.{_column(db, Task, 'task_id')}")


@lru_cache(maxsize=256)
def record_sql(db: peewee.Database, end_fields: tuple[str, ...], ends: int, end_status_in: int,
               change_fields: tuple[str, ...], changes: int, change_status_in: int) -> Shape:
    """PostgreSQL: finish `ends` attempts while unfinished and update `changes` tasks while in an expected
    status, in one statement (one round trip, one commit). Parameters: the attempts' UPDATE ... FROM (VALUES)
    (`update_from_values_sql` keyed by task id and number), the tasks' (keyed by task id), then how many
    attempts must finish. One row comes back: the ids of the tasks changed. When fewer attempts finished,
    the statement fails (a division by zero) and so keeps nothing of either."""
    from engine.store.models import Attempt, Task

    finish = update_from_values_sql(db, Attempt, end_fields, ("task_id", "number"), ends, end_status_in)
    apply = update_from_values_sql(db, Task, change_fields, ("task_id",), changes, change_status_in)
    return Shape(f"WITH finished AS ({finish}), changed AS ({apply}) "
                 f"SELECT ARRAY(SELECT {_column(db, Task, 'task_id')} FROM changed), "
                 f"1 / (CASE WHEN (SELECT count(*) FROM finished) = {db.param} THEN 1 ELSE 0 END)")


def _sql_type(db: peewee.Database, model: type[peewee.Model], name: str) -> str:
    """The column's type, to cast a VALUES column to: a column of text literals or NULLs is text otherwise."""
    field_type = model._meta.fields[name].field_type
    return str(db._field_types.get(field_type, field_type))


def _status_in(db: peewee.Database, model: type[peewee.Model], count: int, alias: str = "") -> str:
    """`status IN (count parameters)`, which on PostgreSQL no index can serve. A plan made while few tasks were
    open finds an index led by status (or holding only unfinished tasks) cheaper than the rows' own keys, and
    once a backlog builds each statement then walks every open task to change a few (measured at 1,000 msg/s
    offered, 16 send threads: 5,000 index entries read per statement, 1.07 ms of the server's CPU per message
    against 0.50 ms). The rows are found by their keys instead."""
    column = f"{alias}{_column(db, model, 'status')}"
    if isinstance(db, peewee.PostgresqlDatabase):
        column = f"({column} || '')"
    return f"{column} IN ({', '.join([db.param] * count)})"


def _by_unique_index(db: peewee.Database, model: type[peewee.Model], key: str) -> str:
    """On SQLite, look rows up by `key`'s own index. Without statistics its planner prefers an index led by
    `status` once the IN list has nine keys or more, and then walks every open task to update a few."""
    field = model._meta.fields[key]
    if not field.unique:
        raise ValueError(f"{model.__name__}.{key} has no unique index to look rows up by")
    if not isinstance(db, peewee.SqliteDatabase):
        return ""
    return f" INDEXED BY {_quote(db, f'{model._meta.table_name}_{field.column_name}')}"


def db_values(model: type[peewee.Model], values: dict[str, Any]) -> list[Any]:
    fields = model._meta.fields
    return [fields[name].db_value(value) for name, value in values.items()]


_UNSET = object()


def rows_db_values(model: type[peewee.Model], names: Sequence[str], rows: Iterable[dict[str, Any]]) -> list[Any]:
    """`db_values` of each row's `names`, flat; a value that is the very object the row before held (a batch's
    one text, params, tags and times) is converted once."""
    fields = [model._meta.fields[name] for name in names]
    last: list[Any] = [_UNSET] * len(names)
    converted: list[Any] = [None] * len(names)
    params: list[Any] = []
    for row in rows:
        for column, (name, field) in enumerate(zip(names, fields)):
            value = row[name]
            if value is not last[column]:
                last[column], converted[column] = value, field.db_value(value)
            params.append(converted[column])
    return params



def fetch(db: peewee.Database, model: type[M], sql: str, params: Sequence[Any]) -> list[M]:
    """Run a SELECT and turn each row into a model instance (what peewee would build, without the cost)."""
    cursor = db.execute_sql(sql, params)
    readers = _readers(model, tuple(description[0] for description in cursor.description))
    return [_instance(model, readers, row) for row in cursor.fetchall()]


Reader = tuple[str, Callable[[Any], Any], type | None]


@lru_cache(maxsize=256)
def _readers(model: type[peewee.Model], columns: tuple[str, ...]) -> tuple[Reader, ...]:
    """Per column: the field's name, its `python_value`, and the type of a value that it would return as it is
    (text of a text field, an int of an integer field), which is then not passed through it."""
    readers = []
    for column in columns:
        field = model._meta.columns[column]
        plain = None
        if type(field).python_value is peewee.Field.python_value:
            plain = (str if isinstance(field, peewee._StringField)
                     else int if isinstance(field, peewee.IntegerField) else None)
        readers.append((field.name, field.python_value, plain))
    return tuple(readers)


def _instance(model: type[M], readers: tuple[Reader, ...], row: Sequence[Any]) -> M:
    instance = model.__new__(model)
    instance.__data__ = {name: value if value is None or type(value) is plain else python_value(value)
                         for (name, python_value, plain), value in zip(readers, row)}
    instance._dirty = set()
    instance.__rel__ = {}
    return instance


def execute(db: peewee.Database, sql: str, params: Sequence[Any]) -> int:
    """Run an INSERT or UPDATE; the number of rows it matched."""
    return int(db.execute_sql(sql, params).rowcount)


def execute_many(db: peewee.Database, sql: str, params: Sequence[Sequence[Any]]) -> int:
    """Run one INSERT or UPDATE for each parameter row in a single driver call; the rows they matched in all.
    The driver's errors become peewee's, as those of `execute_sql` do."""
    with peewee.__exception_wrapper__:
        cursor = db.cursor()
        cursor.executemany(sql, params)
    return int(cursor.rowcount)
