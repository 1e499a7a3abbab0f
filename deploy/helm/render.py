#!/usr/bin/env python3
"""Renders deploy/helm/mecha without helm, for CI and for machines without helm.

Python standard library only. It implements exactly the subset of Go templates
and Helm functions that the chart's templates use, with the same output as
`helm template`, so the chart stays a normal Helm chart:

  {{ .Values.a.b }}  {{ .Release.Name }}  {{ .Release.Namespace }}
  {{ .Chart.Name }}  {{ .Chart.AppVersion }}  {{ .field }} and {{ $.Values.x }} in a range
  {{- toYaml .Values.x | nindent 8 }}  {{ .Values.x | quote }}  indent N
  {{- range .Values.list }} ... {{- end }}   {{- if .Values.x }} ... {{- else }} ... {{- end }}
  {{/* comments */}}  and the {{- / -}} whitespace trimming markers.

Anything else is an error rather than a silent difference from helm. A value
that a template names but values.yaml lacks is an error too (helm would print
nothing), so typos in templates fail CI.

values.yaml and Chart.yaml are read by a small YAML-subset parser (block
mappings and sequences, flow [] / {} of scalars, plain and quoted scalars,
comments). `--check-parser` compares it with PyYAML on given files, which
deploy/check.sh runs once kubernetes-validate has brought PyYAML in.

Usage:
  render.py [--values FILE]... [--name mecha] [--namespace mecha-system]
            [--output FILE] [CHART_DIR]
  render.py --k8s-manifest -o deploy/k8s/daemonset.yaml   (refresh the plain manifest)
  render.py --check-parser FILE...
"""

import argparse
import json
import os
import re
import sys


class TemplateError(Exception):
    """A template or values file this renderer cannot handle."""


# ---------------------------------------------------------------- YAML subset

_INT = re.compile(r"^[-+]?[0-9]+$")
_FLOAT = re.compile(r"^[-+]?([0-9]+\.[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$")


def _strip_comment(line):
    """Removes a trailing # comment that is outside quotes."""
    quote = None
    for i, c in enumerate(line):
        if quote:
            if c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i].rstrip()
    return line.rstrip()


def _scalar(text, where):
    text = text.strip()
    if text == "":
        return None
    if text[0] == '"':
        if not text.endswith('"') or len(text) < 2:
            raise TemplateError(f"{where}: unterminated double-quoted string")
        return json.loads(text)
    if text[0] == "'":
        if not text.endswith("'") or len(text) < 2:
            raise TemplateError(f"{where}: unterminated single-quoted string")
        return text[1:-1].replace("''", "'")
    if text[0] in "[{":
        return _flow(text, where)
    if text[0] in "|>&*!%@`":
        raise TemplateError(f"{where}: {text!r}: block scalars, anchors and tags are not supported")
    if text in ("null", "Null", "NULL", "~"):
        return None
    if text in ("true", "True", "TRUE"):
        return True
    if text in ("false", "False", "FALSE"):
        return False
    if _INT.match(text):
        return int(text)
    if _FLOAT.match(text):
        return float(text)
    return text


def _split_flow(body, where):
    items, depth, quote, start = [], 0, None, 0
    for i, c in enumerate(body):
        if quote:
            if c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
        elif c == "," and depth == 0:
            items.append(body[start:i])
            start = i + 1
    if quote or depth:
        raise TemplateError(f"{where}: unbalanced flow collection")
    last = body[start:]
    if last.strip():
        items.append(last)
    return items


def _flow(text, where):
    if text[0] == "[":
        if not text.endswith("]"):
            raise TemplateError(f"{where}: unterminated [")
        return [_scalar(item, where) for item in _split_flow(text[1:-1], where)]
    if not text.endswith("}"):
        raise TemplateError(f"{where}: unterminated {{")
    result = {}
    for item in _split_flow(text[1:-1], where):
        key, sep, value = item.partition(":")
        if not sep:
            raise TemplateError(f"{where}: flow mapping entry {item!r} has no ':'")
        result[_scalar(key, where)] = _scalar(value, where)
    return result


def _key_value(content, where):
    """Splits `key: value` (value may be empty); None when not a mapping entry."""
    quote = None
    for i, c in enumerate(content):
        if quote:
            if c == quote:
                quote = None
        elif c in "'\"" and i == 0:
            quote = c
        elif c == ":" and (i + 1 == len(content) or content[i + 1] == " "):
            return _scalar(content[:i], where), content[i + 1:].strip()
        elif c in "[{" and i == 0:
            return None
    return None


def parse_yaml(text, name="<yaml>"):
    """Parses the YAML subset described in the module docstring."""
    lines = []
    for number, raw in enumerate(text.splitlines(), 1):
        if raw.strip() in ("---", "...") and not lines:
            continue
        if "\t" in raw[: len(raw) - len(raw.lstrip())]:
            raise TemplateError(f"{name}:{number}: tabs in indentation")
        line = _strip_comment(raw)
        if line.strip():
            lines.append((number, len(line) - len(line.lstrip(" ")), line.strip()))
    if not lines:
        return None
    value, pos = _block(lines, 0, lines[0][1], name)
    if pos != len(lines):
        number = lines[pos][0]
        raise TemplateError(f"{name}:{number}: unexpected indentation")
    return value


def _block(lines, pos, indent, name):
    """Parses the node starting at lines[pos], whose indentation is `indent`."""
    number, _, content = lines[pos]
    if content == "-" or content.startswith("- "):
        return _sequence(lines, pos, indent, name)
    if _key_value(content, f"{name}:{number}") is not None:
        return _mapping(lines, pos, indent, name)
    return _scalar(content, f"{name}:{number}"), pos + 1


def _nested(lines, pos, parent_indent, name, allow_same_indent_list):
    """The value below a `key:` or `-` with nothing after it."""
    if pos < len(lines):
        _, indent, content = lines[pos]
        if indent > parent_indent:
            return _block(lines, pos, indent, name)
        is_item = content == "-" or content.startswith("- ")
        if allow_same_indent_list and indent == parent_indent and is_item:
            return _sequence(lines, pos, indent, name)
    return None, pos


def _mapping(lines, pos, indent, name):
    result = {}
    while pos < len(lines):
        number, line_indent, content = lines[pos]
        if line_indent < indent:
            break
        where = f"{name}:{number}"
        if line_indent > indent:
            raise TemplateError(f"{where}: unexpected indentation")
        entry = _key_value(content, where)
        if entry is None:
            break
        key, rest = entry
        if key in result:
            raise TemplateError(f"{where}: duplicate key {key!r}")
        if rest:
            result[key], pos = _scalar(rest, where), pos + 1
        else:
            result[key], pos = _nested(lines, pos + 1, indent, name, True)
    return result, pos


def _sequence(lines, pos, indent, name):
    result = []
    while pos < len(lines):
        number, line_indent, content = lines[pos]
        if line_indent != indent or not (content == "-" or content.startswith("- ")):
            if line_indent > indent:
                raise TemplateError(f"{name}:{number}: unexpected indentation")
            break
        rest = content[1:].strip()
        if not rest:
            value, pos = _nested(lines, pos + 1, indent, name, False)
            result.append(value)
            continue
        # The item's content starts at this column; continuation lines of a
        # mapping item are indented to it.
        column = indent + (len(content) - len(rest))
        lines[pos] = (number, column, rest)
        value, pos = _block(lines, pos, column, name)
        result.append(value)
    return result, pos


# ---------------------------------------------------------------- toYaml

_NEEDS_QUOTES = re.compile(
    r"^(|[-+]?[0-9][0-9_]*(\.[0-9]*)?([eE][-+]?[0-9]+)?|0x[0-9a-fA-F]+|0o[0-7]+|"
    r"[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN)|"
    r"y|Y|yes|Yes|YES|n|N|no|No|NO|true|True|TRUE|false|False|FALSE|"
    r"on|On|ON|off|Off|OFF|null|Null|NULL|~)$"
)


def _yaml_scalar(value):
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    if (
        _NEEDS_QUOTES.match(text)
        or text[0] in "-?:,[]{}#&*!|>'\"%@` "
        or text[-1] in " :"
        or ": " in text
        or " #" in text
        or "\n" in text
        or any(ord(c) < 32 for c in text)
    ):
        return json.dumps(text, ensure_ascii=False)
    return text


def to_yaml(value):
    """Helm's toYaml: block style, keys sorted, sequences inside mappings not
    indented (as sigs.k8s.io/yaml prints them), no trailing newline."""
    return "\n".join(_yaml_lines(value))


def _yaml_lines(value):
    if isinstance(value, dict):
        if not value:
            return ["{}"]
        out = []
        for key in sorted(value, key=str):
            item = value[key]
            head = f"{_yaml_scalar(key)}:"
            if isinstance(item, dict) and item:
                out.append(head)
                out.extend("  " + line for line in _yaml_lines(item))
            elif isinstance(item, list) and item:
                out.append(head)
                out.extend(_yaml_lines(item))
            else:
                out.append(f"{head} {_yaml_lines(item)[0]}")
        return out
    if isinstance(value, list):
        if not value:
            return ["[]"]
        out = []
        for item in value:
            lines = _yaml_lines(item)
            out.append("- " + lines[0])
            out.extend("  " + line for line in lines[1:])
        return out
    return [_yaml_scalar(value)]


# ---------------------------------------------------------------- templates

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)


def _tokens(text, name):
    """Splits a template into ('text', s) and ('action', s) tokens, applying
    the trim markers to the neighbouring text as Go templates do."""
    tokens, pos, trim_next = [], 0, False
    for m in _ACTION.finditer(text):
        chunk = text[pos:m.start()]
        if trim_next:
            chunk = chunk.lstrip(" \t\r\n")
        if m.group(1):
            chunk = chunk.rstrip(" \t\r\n")
        tokens.append(("text", chunk))
        body = m.group(2).strip()
        if not (body.startswith("/*") and body.endswith("*/")):
            tokens.append(("action", body, f"{name}:{text.count(chr(10), 0, m.start()) + 1}"))
        trim_next = bool(m.group(3))
        pos = m.end()
    chunk = text[pos:]
    if trim_next:
        chunk = chunk.lstrip(" \t\r\n")
    tokens.append(("text", chunk))
    if "{{" in "".join(t[1] for t in tokens if t[0] == "text"):
        raise TemplateError(f"{name}: an action this renderer cannot parse")
    return tokens


def _parse(tokens, pos, stop):
    """Builds a node list until an action in `stop`; returns (nodes, pos, stopper)."""
    nodes = []
    while pos < len(tokens):
        token = tokens[pos]
        if token[0] == "text":
            nodes.append(token)
            pos += 1
            continue
        body, where = token[1], token[2]
        word = body.split(None, 1)[0] if body else ""
        if word in stop:
            return nodes, pos + 1, word
        if word in ("range", "if"):
            pipeline = body[len(word):].strip()
            inner, pos, stopper = _parse(tokens, pos + 1, ("end", "else"))
            other = []
            if stopper == "else":
                other, pos, stopper = _parse(tokens, pos, ("end",))
            if stopper != "end":
                raise TemplateError(f"{where}: {word} without end")
            nodes.append((word, pipeline, inner, other, where))
            continue
        if word in ("end", "else", "with", "define", "template", "include", "block"):
            raise TemplateError(f"{where}: {{{{ {body} }}}} is not supported here")
        nodes.append(("action", body, where))
        pos += 1
    if stop:
        raise TemplateError(f"template ended inside a block (missing {{{{ end }}}})")
    return nodes, pos, None


def _split_words(text, where):
    words, i = [], 0
    while i < len(text):
        c = text[i]
        if c.isspace():
            i += 1
        elif c == '"':
            j = i + 1
            while j < len(text) and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            if j >= len(text):
                raise TemplateError(f"{where}: unterminated string")
            words.append(("str", json.loads(text[i:j + 1])))
            i = j + 1
        else:
            j = i
            while j < len(text) and not text[j].isspace():
                j += 1
            words.append(("word", text[i:j]))
            i = j
    return words


class _Missing:
    pass


def _lookup(word, dot, root, where):
    if word == "$":
        return root
    if word.startswith("$."):
        base, path = root, word[2:]
    elif word == ".":
        return dot
    elif word.startswith("."):
        base, path = dot, word[1:]
    else:
        raise TemplateError(f"{where}: {word!r} is not a value this renderer knows")
    value = base
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            raise TemplateError(f"{where}: {word} is not set (no {part!r})")
        value = value[part]
    return value


def _print(value, where):
    if isinstance(value, (dict, list)):
        raise TemplateError(f"{where}: printing a collection; use toYaml")
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    return str(value)


def _call(function, args, where):
    if function == "toYaml" and len(args) == 1:
        return to_yaml(args[0])
    if function in ("nindent", "indent") and len(args) == 2 and isinstance(args[0], int):
        pad = " " * args[0]
        text = pad + _print(args[1], where).replace("\n", "\n" + pad)
        return "\n" + text if function == "nindent" else text
    if function == "quote" and len(args) == 1:
        return json.dumps(_print(args[0], where), ensure_ascii=False)
    raise TemplateError(f"{where}: function {function} with {len(args)} arguments is not supported")


def _pipeline(text, dot, root, where):
    value = _Missing
    for command in text.split("|"):
        words = _split_words(command.strip(), where)
        if not words:
            raise TemplateError(f"{where}: empty command in {text!r}")
        head_kind, head = words[0]
        if head_kind == "str" or head.startswith((".", "$")) or _INT.match(head):
            if len(words) != 1 or value is not _Missing:
                raise TemplateError(f"{where}: unexpected value in {text!r}")
            if head_kind == "str":
                value = head
            elif _INT.match(head):
                value = int(head)
            else:
                value = _lookup(head, dot, root, where)
            continue
        args = []
        for kind, word in words[1:]:
            if kind == "str":
                args.append(word)
            elif _INT.match(word):
                args.append(int(word))
            else:
                args.append(_lookup(word, dot, root, where))
        if value is not _Missing:
            args.append(value)
        value = _call(head, args, where)
    return value


def _truthy(value):
    return value not in (None, False, 0, "", [], {})


def _execute(nodes, dot, root, out):
    for node in nodes:
        kind = node[0]
        if kind == "text":
            out.append(node[1])
        elif kind == "action":
            out.append(_print(_pipeline(node[1], dot, root, node[2]), node[2]))
        elif kind == "if":
            _, pipeline, inner, other, where = node
            branch = inner if _truthy(_pipeline(pipeline, dot, root, where)) else other
            _execute(branch, dot, root, out)
        elif kind == "range":
            _, pipeline, inner, other, where = node
            items = _pipeline(pipeline, dot, root, where)
            if items is None:
                items = []
            if not isinstance(items, list):
                raise TemplateError(f"{where}: range over a non-list")
            if not items:
                _execute(other, dot, root, out)
            for item in items:
                _execute(inner, item, root, out)


def render_template(text, context, name="template"):
    """Renders one template text with `context` as both dot and root."""
    nodes, _, _ = _parse(_tokens(text, name), 0, ())
    out = []
    _execute(nodes, context, context, out)
    return "".join(out)


def _merge(base, override):
    """Helm's values merge: maps merge key by key, anything else replaces."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = _merge(base.get(key), value) if key in base else value
        return merged
    return override


def render_chart(chart_dir, value_files, release, namespace):
    """Renders every templates/*.yaml of the chart, in name order, the way
    `helm template` prints them."""
    def load(path):
        with open(path, encoding="utf-8") as f:
            return parse_yaml(f.read(), path) or {}

    chart = load(os.path.join(chart_dir, "Chart.yaml"))
    values = load(os.path.join(chart_dir, "values.yaml"))
    for path in value_files:
        values = _merge(values, load(path))
    context = {
        "Values": values,
        "Release": {"Name": release, "Namespace": namespace, "Service": "Helm"},
        "Chart": {"Name": chart.get("name"), "Version": chart.get("version"),
                  "AppVersion": chart.get("appVersion")},
    }
    templates = os.path.join(chart_dir, "templates")
    parts = []
    for entry in sorted(os.listdir(templates)):
        if not entry.endswith((".yaml", ".yml")):
            continue
        path = os.path.join(templates, entry)
        with open(path, encoding="utf-8") as f:
            text = render_template(f.read(), context, path)
        if text.strip():
            source = f"{chart.get('name')}/templates/{entry}"
            parts.append(f"---\n# Source: {source}\n{text.strip(chr(10))}\n")
    return "".join(parts)


def check_parser(paths):
    """Compares the subset parser with PyYAML on `paths`; True when they agree."""
    import yaml  # PyYAML, present once kubernetes-validate is installed.

    ok = True
    for path in paths:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        ours, theirs = parse_yaml(text, path), yaml.safe_load(text)
        if ours != theirs:
            print(f"render.py: {path}: the YAML-subset parser disagrees with PyYAML", file=sys.stderr)
            print(f"  ours:   {json.dumps(ours, sort_keys=True)}", file=sys.stderr)
            print(f"  PyYAML: {json.dumps(theirs, sort_keys=True)}", file=sys.stderr)
            ok = False
        # toYaml output must read back as the same value.
        if yaml.safe_load(to_yaml(theirs)) != theirs:
            print(f"render.py: {path}: toYaml does not round-trip", file=sys.stderr)
            ok = False
    return ok


# The head of deploy/k8s/daemonset.yaml, which is this chart rendered with its
# default values.
K8S_HEADER = """\
# Generated from the Helm chart deploy/helm/mecha (release "mecha", namespace
# mecha-system, default values) by deploy/helm/render.py. Do not edit by hand:
# change the chart, then run
#   python3 deploy/helm/render.py --k8s-manifest -o deploy/k8s/daemonset.yaml
# deploy/check.sh fails when this file and the chart disagree.
#
# Apply with deploy/k8s/namespace.yaml first. Image: build deploy/Dockerfile and
# replace registry.example.com/mecha/mechad with your registry's name for it.
"""


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("chart", nargs="?", default=os.path.join(here, "mecha"))
    parser.add_argument("--values", "-f", action="append", default=[])
    parser.add_argument("--name", default="mecha")
    parser.add_argument("--namespace", default="mecha-system")
    parser.add_argument("--k8s-manifest", action="store_true",
                        help="default values, release mecha in mecha-system, with the manifest's header")
    parser.add_argument("--output", "-o")
    parser.add_argument("--check-parser", nargs="+", metavar="FILE")
    args = parser.parse_args()
    try:
        if args.check_parser:
            return 0 if check_parser(args.check_parser) else 1
        if args.k8s_manifest:
            text = K8S_HEADER + render_chart(args.chart, [], "mecha", "mecha-system")
        else:
            text = render_chart(args.chart, args.values, args.name, args.namespace)
    except TemplateError as e:
        print(f"render.py: {e}", file=sys.stderr)
        return 1
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
