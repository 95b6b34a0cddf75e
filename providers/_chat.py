"""Shared by the chat providers taking a list of users a call: messages packed into calls, per-message summaries."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from providers.base import Message, SendResult

# The users a message goes to, or None when it must go in a call of its own (an empty receiver, @all).
UsersOf = Callable[[Message], list[str] | None]
SendOne = Callable[[Message], SendResult]
SendCall = Callable[[Sequence[Message], Sequence[Sequence[str]]], list[SendResult]]


def pack(users: Sequence[Sequence[str]], limit: int, key: Callable[[str], str] = str) -> list[list[int]]:
    """The indexes of the messages in calls of at most `limit` users, no user twice in one call (so a refusal
    names one message's user), first fit in order. A message naming more than `limit` users goes alone."""
    calls: list[tuple[list[int], set[str]]] = []
    for index, names in enumerate(users):
        keys = {key(name) for name in names}
        for members, taken in calls:
            if len(taken) + len(keys) <= limit and taken.isdisjoint(keys):
                members.append(index)
                taken.update(keys)
                break
        else:
            calls.append(([index], keys))
    return [members for members, _ in calls]


def send_in_calls(messages: Sequence[Message], users_of: UsersOf, limit: int, send_one: SendOne,
                  send_call: SendCall, key: Callable[[str], str] = str) -> list[SendResult]:
    """A result per message, in order: the messages sent in as few calls as `pack` allows (`send_call` for a
    call of several, `send_one` for a message alone)."""
    results: list[SendResult | None] = [None] * len(messages)
    listed: list[tuple[int, list[str]]] = []
    for index, message in enumerate(messages):
        names = users_of(message)
        if names is None:
            results[index] = send_one(message)
        else:
            listed.append((index, names))
    for call in pack([names for _, names in listed], limit, key):
        chosen = [listed[position] for position in call]
        if len(chosen) == 1:
            results[chosen[0][0]] = send_one(messages[chosen[0][0]])
            continue
        answered = send_call([messages[index] for index, _ in chosen], [names for _, names in chosen])
        for (index, _), result in zip(chosen, answered, strict=True):
            results[index] = result
    assert all(result is not None for result in results), "a message left without a result"
    return [result for result in results if result is not None]


def own_request(result: SendResult, field: str, names: Sequence[str], separator: str, size: int) -> SendResult:
    """The result with the call's request summary cut to this message: its own users in `field` and the number
    of messages the call carried (a call's whole user list is not stored with every one of its messages)."""
    summary: Mapping[str, Any] = result.request_summary
    body = summary.get("body")
    if not isinstance(body, dict) or field not in body:
        return result  # the token request's summary (its fetch failed): nothing of the call to cut
    own = {**summary, "body": {**body, field: separator.join(names)}, "batch_size": size}
    return replace(result, request_summary=own)
