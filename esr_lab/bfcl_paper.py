"""BFCL as the paper's released code asks and grades it (eval_funcall.py; PAPER.md).

The model gets a system message asking for a JSON array of calls, `[{"name": ..., "arguments":
{...}}]`, and a user turn listing the functions as indented JSON, then the request. Responses are
read as JSON (the whole text, a fenced block, `<tool_call>` tags, or the first JSON array/object
of calls found in the text) and graded leniently, as the released code does:
- name match: the set of called names equals the set of expected names;
- full match: every expected call's name is called, and each expected argument is either given
  with an allowed value or left out where its only allowed value is "" (or None); values compare
  after lower-casing and stripping strings and turning numbers into floats, or as strings of
  those; there is no type check, and arguments the answer key lacks are ignored;
- parse rate: the share of responses in which any call was found.
This is more lenient than BFCL's own AST checker (esr_lab.bfcl) in types, string forms and extra
arguments, and stricter in one place: an optional argument left out fails unless "" is its only
allowed value. Its numbers are the paper's; they are not comparable with the AST checker's.
"""

from __future__ import annotations

import json
import re
from typing import Any

SYSTEM_PROMPT = (
    "You are a helpful assistant with access to functions. "
    "When the user's request can be fulfilled by calling a function, "
    "respond with a JSON array of function calls like: "
    '[{"name": "function_name", "arguments": {"arg1": "value1"}}]\n'
    "If no function is needed, respond normally."
)
_FENCE_RE = re.compile(r"```(?:json)?\s*([\s\S]*?)```")
_TOOL_CALL_RE = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
_JSON_SPAN_RE = re.compile(r"(\[[\s\S]*?\]|\{[\s\S]*?\})")


def render_problem(question: str, functions: list[dict]) -> str:
    """The user turn: the functions as indented JSON, then the request."""
    listed = [
        {
            "name": f.get("name", "unknown"),
            "description": f.get("description", ""),
            "parameters": f.get("parameters", {}),
        }
        for f in functions
    ]
    return f"Available functions:\n{json.dumps(listed, indent=2)}\n\nUser request: {question}"


def _as_calls(value: Any) -> list[dict] | None:
    """A parsed JSON value as a list of calls, or None when it is not one."""
    if isinstance(value, list):
        return value
    if isinstance(value, dict) and "name" in value:
        return [value]
    return None


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def parse_json_calls(response: str) -> list[dict]:
    """The calls in a response, tried in the released code's order; [] when none."""
    text = response.strip()
    for candidate in (text, *(m.strip() for m in _FENCE_RE.findall(text)[:1])):
        calls = _as_calls(_loads(candidate))
        if calls is not None:
            return calls
    tagged = [_loads(t) for t in _TOOL_CALL_RE.findall(text)]
    tagged = [t for t in tagged if isinstance(t, dict) and "name" in t]
    if tagged:
        return tagged
    for match in _JSON_SPAN_RE.finditer(text):
        value = _loads(match.group(0))
        if (
            isinstance(value, list)
            and value
            and all(isinstance(v, dict) and "name" in v for v in value)
        ):
            return value
        if isinstance(value, dict) and "name" in value:
            return [value]
    return []


def normalise(value: Any) -> Any:
    """Strings lower-cased and stripped, numbers as floats (bools too), lists item by item."""
    if isinstance(value, str):
        return value.strip().lower()
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, list):
        return [normalise(v) for v in value]
    return value


def _arguments(call: dict) -> dict:
    args = call.get("arguments", {}) if isinstance(call, dict) else {}
    if isinstance(args, str):
        args = _loads(args)
    return args if isinstance(args, dict) else {}


def _value_allowed(value: Any, allowed: list) -> bool:
    given = normalise(value)
    return any(normalise(a) == given or str(normalise(a)) == str(given) for a in allowed)


def full_match(calls: list[dict], answer: list[dict]) -> bool:
    """Every expected call made with allowed values (the released code's lenient rule)."""
    by_name = {c.get("name", ""): _arguments(c) for c in calls if isinstance(c, dict)}
    for expected in answer:
        for name, arguments in expected.items():
            if name not in by_name:
                return False
            given = by_name[name]
            for arg, allowed in arguments.items():
                if arg not in given:
                    if allowed in ([""], [None]):
                        continue
                    return False
                if not _value_allowed(given[arg], allowed):
                    return False
    return True


def name_match(calls: list[dict], answer: list[dict]) -> bool:
    called = {c.get("name", "") for c in calls if isinstance(c, dict)}
    return called == {name for expected in answer for name in expected}


def grade_response(response: str, answer: list[dict]) -> tuple[bool, bool, str]:
    """(name match, full match, reason) of one response under the lenient grader."""
    calls = parse_json_calls(response)
    if not calls:
        return False, False, "unparsable: no JSON calls"
    names, full = name_match(calls, answer), full_match(calls, answer)
    return names, full, "full match" if full else ("wrong arguments" if names else "wrong names")
