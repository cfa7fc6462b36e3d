"""Chat templates: prompts x and x + p rendered the way transformers renders them.

A checkpoint's ``chat_template`` (``chat_template.jinja`` or the
``chat_template`` key of ``tokenizer_config.json``) is a Jinja template. It is
rendered here with the environment ``transformers.apply_chat_template`` uses
(sandboxed, ``trim_blocks``, ``lstrip_blocks``, loop controls, its ``tojson``,
``raise_exception`` and ``strftime_now``), with the tokenizer's special tokens
(``bos_token``, ``eos_token`` ...) and extra variables such as
``enable_thinking=False`` (Qwen3's non-thinking mode) in scope, and
``add_generation_prompt=True``: the rendered text ends where the assistant's
response begins. Tokenizing it (added tokens such as ``<|im_start|>`` are
matched in the text) gives the prompt ids; the response ids follow unchanged.

Where p goes is the experiment's choice (``ChatFormat.p_position``):
appended to the user message (default), prepended to it, or as a system
message.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import os
from typing import Any

P_POSITIONS = ("user_end", "user_start", "system")
_TEMPLATE_FILE = "chat_template.jinja"


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _raise(message):
    import jinja2

    raise jinja2.exceptions.TemplateError(message)


@functools.cache
def compile_template(source: str):
    """The compiled Jinja template (transformers' environment)."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    return env.from_string(source)


def read_template(directory: str) -> str | None:
    """The chat template stored in a checkpoint or tokenizer directory, or None.

    ``chat_template.jinja`` first (transformers >= 4.50 writes it), then
    ``tokenizer_config.json[chat_template]`` (a string, or a list of named
    templates of which ``default`` is used).
    """
    file = os.path.join(directory, _TEMPLATE_FILE)
    if os.path.exists(file):
        with open(file) as f:
            return f.read()
    config = os.path.join(directory, "tokenizer_config.json")
    if not os.path.exists(config):
        return None
    with open(config) as f:
        template = json.load(f).get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None


@dataclasses.dataclass(frozen=True)
class ChatFormat:
    """How a prompt x and its privileged context p become the model's prefix text.

    Attributes:
      template: the Jinja chat template source.
      p_position: ``user_end`` (x, separator, p in one user message),
        ``user_start`` (p, separator, x) or ``system`` (p as a system message).
      p_separator: text between x and p in the user message.
      variables: extra template variables (``(("enable_thinking", False),)``).
      special_tokens: ``bos_token`` / ``eos_token`` ... texts the template may use.
    """

    template: str
    p_position: str = "user_end"
    p_separator: str = "\n\n"
    variables: tuple[tuple[str, Any], ...] = ()
    special_tokens: tuple[tuple[str, str], ...] = ()

    def __post_init__(self):
        if self.p_position not in P_POSITIONS:
            raise ValueError(f"p_position {self.p_position!r} is not one of {P_POSITIONS}")
        compile_template(self.template)  # a syntax error surfaces here, named by jinja2

    def messages(self, x: str, p: str = "") -> list[dict]:
        """The conversation of prompt ``x`` with privileged text ``p`` (may be empty)."""
        p = p.strip()
        if not p:
            return [{"role": "user", "content": x}]
        if self.p_position == "system":
            return [{"role": "system", "content": p}, {"role": "user", "content": x}]
        parts = (x, p) if self.p_position == "user_end" else (p, x)
        return [{"role": "user", "content": self.p_separator.join(parts)}]

    def render(self, x: str, p: str = "") -> str:
        """The prefix text up to where the assistant's response starts."""
        kwargs = dict(self.special_tokens)
        kwargs.update(self.variables)
        return compile_template(self.template).render(
            messages=self.messages(x, p),
            tools=None,
            documents=None,
            add_generation_prompt=True,
            **kwargs,
        )
