"""A safe evaluator for SVAMP-style arithmetic: numbers, + - * /, parentheses.

SVAMP labels are equations such as `( ( 17.0 + 15.0 ) + 2.0 )` and a student
is right when its equation has the same value. The reference code calls
Python's `eval` on model output; this module never does. It tokenizes and
parses with a small recursive-descent grammar and rejects everything else:

    expr   := term (("+" | "-") term)*
    term   := factor (("*" | "/") factor)*
    factor := ("+" | "-") factor | number | "(" expr ")"
    number := digits ["." digits] | "." digits      (ASCII 0-9 only)

There is no exponent operator, no names, no calls, no scientific notation:
`2**3`, `1e999999`, `__import__('os')` and `10**10**10` are not arithmetic
here. Hostile sizes are bounded up front: at most MAX_CHARS characters,
MAX_DEPTH nested parentheses/signs, and MAX_NUMBER_CHARS per literal, so
the work is linear in a short input and recursion cannot overflow.

    >>> safe_eval("( 84.0 / 2.0 )")
    42.0
    >>> safe_eval("1/0") is None
    True
"""
import math
import re

MAX_CHARS = 1000
MAX_DEPTH = 64
MAX_NUMBER_CHARS = 40

# Relative and absolute tolerance for "same value". Different but equivalent
# equations differ only by float rounding (~1e-16 relative), while a wrong
# answer differs by far more; 1e-9 separates the two even for answers in
# the millions, unlike a loose 1e-4 that would accept 12345.6 for 12345.
VALUE_TOLERANCE = 1e-9

_TOKEN = re.compile(r"[ \t\n]*(?:([0-9]+(?:\.[0-9]*)?|\.[0-9]+)|([-+*/()]))")


class _Invalid(Exception):
    """Raised inside the parser; safe_eval turns it into None."""


def _tokenize(expr: str) -> list[str]:
    tokens: list[str] = []
    position = 0
    end = len(expr.rstrip(" \t\n"))
    while position < end:
        match = _TOKEN.match(expr, position)
        if match is None:
            raise _Invalid(f"unexpected character {expr[position]!r}")
        number, operator = match.groups()
        if number is not None and len(number) > MAX_NUMBER_CHARS:
            raise _Invalid("number literal too long")
        tokens.append(number if number is not None else operator)
        position = match.end()
    return tokens


class _Parser:
    """Recursive descent over a token list; depth-limited."""

    def __init__(self, tokens: list[str]):
        self.tokens = tokens
        self.index = 0
        self.depth = 0

    def peek(self) -> str | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise _Invalid("unexpected end of expression")
        self.index += 1
        return token

    def expr(self) -> float:
        value = self.term()
        while self.peek() in ("+", "-"):
            if self.take() == "+":
                value = value + self.term()
            else:
                value = value - self.term()
        return value

    def term(self) -> float:
        value = self.factor()
        while self.peek() in ("*", "/"):
            operator = self.take()
            right = self.factor()
            if operator == "*":
                value = value * right
            elif right == 0:
                raise _Invalid("division by zero")
            else:
                value = value / right
        return value

    def factor(self) -> float:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _Invalid("expression nested too deeply")
        token = self.take()
        if token in ("+", "-"):
            value = self.factor()
            value = -value if token == "-" else value
        elif token == "(":
            value = self.expr()
            if self.take() != ")":
                raise _Invalid("missing ')'")
        elif token[0] in "0123456789.":
            value = float(token)
        else:
            raise _Invalid(f"unexpected {token!r}")
        self.depth -= 1
        return value


def safe_eval(expr: str) -> float | None:
    """The value of an arithmetic expression, or None if it is not one.

    None for: anything but numbers, + - * / and parentheses; malformed or
    empty expressions; division by zero; non-finite results; inputs longer
    than MAX_CHARS or nested deeper than MAX_DEPTH. Never raises, never
    calls eval().
    """
    if not isinstance(expr, str) or len(expr) > MAX_CHARS:
        return None
    try:
        parser = _Parser(_tokenize(expr))
        if not parser.tokens:
            return None
        value = parser.expr()
        if parser.peek() is not None:
            return None
    except (_Invalid, OverflowError):
        return None
    return value if math.isfinite(value) else None


def same_value(a: float | None, b: float | None) -> bool:
    """Whether two evaluated equations agree (None never agrees with anything)."""
    if a is None or b is None:
        return False
    return math.isclose(a, b, rel_tol=VALUE_TOLERANCE, abs_tol=VALUE_TOLERANCE)
