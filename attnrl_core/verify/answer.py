"""The rule path of the verifier (docs/method.md §9): extract the final answer, normalise, compare.

Pure string work in this process (microseconds a response), decided without math-verify where
it can be: the last \\boxed{...} (or \\fbox{...}, or `\\boxed 7`) of the text after the last
"</think>", equal to the reference after MATH-style normalisation (Hendrycks' `strip_string`
family), or equal as an exact number ("0.5" = "\\frac{1}{2}" = "1/2" = ".50").

    >>> boxed = last_boxed(answer_region("<think>\\\\boxed{3}</think> so \\\\boxed{\\\\dfrac{3}{4}}"))
    >>> boxed, normalize_answer(boxed), rule_verdict(boxed, "0.75")
    ('\\\\dfrac{3}{4}', '\\\\frac{3}{4}', True)
    >>> rule_verdict("\\\\sqrt{4}", "2") is None           # undecided: math-verify's turn
    True

Model output is untrusted: nothing in it is evaluated as code. Only strings that a strict regex
accepted as plain digits are converted to numbers (never more than `MAX_NUMBER_CHARS` of them,
so CPython's quadratic str->int never runs on a huge number), and every scan is linear.
"""

from __future__ import annotations

import re
from fractions import Fraction

THINK_END = "</think>"
# A \boxed{} answer longer than this is not an answer; bounds the brace scan.
MAX_BOXED_CHARS = 2000
# More digits than this and a string is not compared as a number (CPython refuses str->int
# past 4300 digits and is quadratic below that; references are short).
MAX_NUMBER_CHARS = 1000


def answer_region(response: str) -> str:
    """The text after the last "</think>" (the whole response if there is none).

    >>> answer_region("<think>maybe \\\\boxed{1}</think> so \\\\boxed{2}")
    ' so \\\\boxed{2}'
    """
    cut = response.rfind(THINK_END)
    return response if cut < 0 else response[cut + len(THINK_END) :]


def last_boxed(text: str, max_chars: int = MAX_BOXED_CHARS) -> str | None:
    """Content of the last \\boxed{...} / \\fbox{...} (balanced braces) or `\\boxed TOKEN`.

    Returns None when there is no box, when the last one never closes, or when its content is
    longer than `max_chars` (the scan stops there, so this is linear in the answer, not the
    text). Escaped braces \\{ \\} inside do not count.

    >>> last_boxed("x = \\\\boxed{1} or rather \\\\boxed{\\\\frac{1}{2}}.")
    '\\\\frac{1}{2}'
    >>> last_boxed("so \\\\boxed 7$.")
    '7'
    >>> last_boxed("\\\\boxed{1} then \\\\boxed{2") is None   # the last box is unbalanced
    True
    """
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = start + (len("\\boxed") if text.startswith("\\boxed", start) else len("\\fbox"))
    n = len(text)
    j = i
    while j < n and j - i < max_chars and text[j].isspace():
        j += 1
    if j >= n:
        return None
    if text[j] != "{":
        # "\boxed 7": MATH's shorthand needs a space; "\boxedx" is some other macro.
        if j == i:
            return None
        end = j
        while end < n and end - j <= max_chars and not text[end].isspace() and text[end] != "$":
            end += 1
        token = text[j:end]
        return token if 0 < len(token) <= max_chars else None
    close = _closing_brace(text, j, stop=min(n, j + max_chars + 2))
    return text[j + 1 : close] if close >= 0 else None


def _closing_brace(s: str, open_at: int, stop: int | None = None) -> int:
    """Index of the brace closing s[open_at] == "{" before `stop`, or -1. An escaped character
    (\\{, \\}, \\\\) is skipped: those braces are literal."""
    depth = 0
    k = open_at
    n = len(s) if stop is None else stop
    while k < n:
        c = s[k]
        if c == "\\":
            k += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return k
        k += 1
    return -1


_TEXT_MACRO = re.compile(r"\\(?:text|textbf|textrm|textit|mbox|mathrm|mathbf|operatorname)\s*\{")
_UNIT_WORDS = re.compile(r"[A-Za-z][A-Za-z .]*")
_LEFT_RIGHT = re.compile(r"\\(?:left|right)(?![A-Za-z])")
_SHORT_LHS = re.compile(r"[A-Za-z]{1,2}")
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_INT_SLASH_INT = re.compile(r"(-?\d+)/(\d+)")
_DECIMAL = re.compile(r"(-?)(\d*)\.(\d+)")


def _strip_text_macros(s: str) -> str:
    """\\text{...}-like macros: a trailing unit is dropped, anything else unwrapped.

    "10\\text{ cm}^2" -> "10", "\\text{(A)}" -> "(A)", "\\mbox{odd}" -> "odd". One left-to-right
    pass; a macro that never closes is kept verbatim.
    """
    out: list[str] = []
    has_value = False  # is there anything before this macro for a unit to follow?
    pos = 0
    while True:
        m = _TEXT_MACRO.search(s, pos)
        if m is None:
            out.append(s[pos:])
            break
        close = _closing_brace(s, m.end() - 1)
        if close < 0:
            out.append(s[pos:])
            break
        out.append(s[pos : m.start()])
        has_value = has_value or bool(s[pos : m.start()].strip())
        content = s[m.end() : close]
        # A word after a value is its unit ("5 \text{ dollars}"); MATH drops everything from
        # the unit on ("\text{ cm}^2" as well).
        if has_value and _UNIT_WORDS.fullmatch(content.strip() or "-"):
            break
        out.append(content)
        has_value = has_value or bool(content.strip())
        pos = close + 1
    return "".join(out)


def _fix_shorthand_args(s: str, macro: str, n_args: int) -> str:
    """Brace single-character arguments: \\frac12 -> \\frac{1}{2}, \\sqrt3 -> \\sqrt{3}.

    Braced arguments are copied as they are ("\\frac1{72}" -> "\\frac{1}{72}").
    """
    parts = s.split(macro)
    out = [parts[0]]
    for part in parts[1:]:
        out.append(macro)
        rest = part
        for _ in range(n_args):
            if rest.startswith("{"):
                close = _closing_brace(rest, 0)
                if close < 0:
                    break
                out.append(rest[: close + 1])
                rest = rest[close + 1 :]
            elif rest[:1].isalnum():
                out.append("{" + rest[0] + "}")
                rest = rest[1:]
            else:
                break
        out.append(rest)
    return "".join(out)


def _canonical_decimal(s: str) -> str:
    """"2.50" -> "2.5", "3.0" -> "3", ".5" -> "0.5", "-0.0" -> "0"; other strings unchanged."""
    m = _DECIMAL.fullmatch(s)
    if m is None:
        return s
    sign, whole, frac = m.groups()
    whole = whole.lstrip("0") or "0"
    frac = frac.rstrip("0")
    text = whole + ("." + frac if frac else "")
    return text if text == "0" else sign + text


def normalize_answer(s: str) -> str:
    """MATH-style normal form of an answer string (Hendrycks' strip_string, extended).

    Drops spaces, \\left/\\right, \\!, thin spaces, \\displaystyle, dollars, degrees, \\% and %,
    trailing \\text{} units and full stops, a leading "+" and "x =" / "k=" (one or two letters);
    unwraps \\text{} and \\mbox{}; \\dfrac and \\tfrac -> \\frac; braces \\frac12 and \\sqrt3;
    "1,000" -> "1000"; "a/b" (integers) -> "\\frac{a}{b}"; decimals lose trailing zeros
    (".50" -> "0.5", "3.0" -> "3"); one pair of outer braces goes.

    >>> normalize_answer("x = \\\\dfrac12")
    '\\\\frac{1}{2}'
    >>> normalize_answer("\\\\$1,000.00")
    '1000'
    >>> normalize_answer("10\\\\text{ cm}^2")
    '10'
    >>> normalize_answer("45^\\\\circ")
    '45'
    """
    s = s.strip()
    spacing = (("\n", ""), ("\\!", ""), ("\\,", ""), ("\\;", ""), ("\\:", ""), ("\\ ", " "), ("{,}", ","))
    for old, new in spacing:
        s = s.replace(old, new)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\displaystyle", "")
    s = _LEFT_RIGHT.sub("", s)
    for degree in ("^{\\circ}", "^\\circ", "\\circ", "°"):
        s = s.replace(degree, "")
    s = _strip_text_macros(s)
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    if s.count("=") == 1:
        lhs, rhs = s.split("=")
        if _SHORT_LHS.fullmatch(lhs.strip()):
            s = rhs
    s = "".join(s.split()).rstrip(".")  # "5." ends a sentence, not a number
    s = _fix_shorthand_args(s, "\\sqrt", 1)
    s = _fix_shorthand_args(s, "\\frac", 2)
    if s.startswith("+"):
        s = s[1:]
    if len(s) >= 2 and s[0] == "{" and _closing_brace(s, 0) == len(s) - 1:
        s = s[1:-1]
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    m = _INT_SLASH_INT.fullmatch(s)
    if m is not None:
        s = "\\frac{" + m.group(1) + "}{" + m.group(2) + "}"
    return _canonical_decimal(s)


_INTEGER = re.compile(r"-?\d+")
_PLAIN_DECIMAL = re.compile(r"-?\d*\.\d+")
_LATEX_FRACTION = re.compile(r"(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}")


def exact_number(s: str, max_chars: int = MAX_NUMBER_CHARS) -> tuple[Fraction, bool] | None:
    """A normalised answer as an exact number: (value, is_decimal), or None.

    Only strings that a strict regex accepts are converted ("-17", "0.75", "\\frac{3}{4}",
    "-\\frac{-3}{4}" after normalize_answer turned "3/4" into "\\frac{3}{4}"); `is_decimal` marks
    a decimal point, which math-verify compares after rounding (so "0.333333" may equal 1/3
    there but never here). Longer than `max_chars`: None, before any conversion.

    >>> exact_number("\\\\frac{6}{8}")
    (Fraction(3, 4), False)
    >>> exact_number("0.75")
    (Fraction(3, 4), True)
    """
    if len(s) > max_chars:
        return None
    if _INTEGER.fullmatch(s):
        return Fraction(int(s)), False
    if _PLAIN_DECIMAL.fullmatch(s):
        return Fraction(s), True
    m = _LATEX_FRACTION.fullmatch(s)
    if m is not None and int(m.group(3)) != 0:
        value = Fraction(int(m.group(2)), int(m.group(3)))
        return (-value if m.group(1) else value), False
    return None


_NUMBER_SHAPED = re.compile(r"[-+]?[\d.,\s]+")


def rule_verdict(
    boxed: str | None,
    reference: str,
    max_number_chars: int = MAX_NUMBER_CHARS,
) -> bool | None:
    """True / False when the rule path can decide, None when math-verify must.

    True: equal after normalisation, or equal exact numbers. False (without math-verify) only
    where math-verify could not disagree: two different exact integers/fractions with no
    decimal point and no percent sign (math-verify compares those exactly; tests check the
    agreement), or a number-shaped answer longer than `max_number_chars` digits.

    >>> rule_verdict("\\\\dfrac{3}{4}", "3/4"), rule_verdict("18", "17"), rule_verdict("\\\\sqrt{4}", "2")
    (True, False, None)
    """
    if boxed is None:
        return None
    pred, ref = normalize_answer(boxed), normalize_answer(reference)
    if pred and pred == ref:
        return True
    pred_num, ref_num = exact_number(pred, max_number_chars), exact_number(ref, max_number_chars)
    if pred_num is not None and ref_num is not None:
        if pred_num[0] == ref_num[0]:
            return True
        has_percent = "%" in boxed or "%" in reference
        if not (pred_num[1] or ref_num[1] or has_percent):
            return False
        return None
    if len(pred) > max_number_chars and _NUMBER_SHAPED.fullmatch(boxed):
        return False
    return None


# Free-text references (CHAMP writes "C(10, 5), or equivalently 252", "5/14, or approximately
# 35.7%", "999 (i.e., all except for one value)", "0 is the only possible value"): the exact
# forms a response may give. Approximations are dropped (35.7% is not 5/14), explanations in
# "(i.e., ...)" too; the text as written always stays one of the forms.
_EQUIVALENTLY = re.compile(r"\s*(?:,|;)?\s*(?:or\s+)?equivalently,?\s*", re.IGNORECASE)
_APPROXIMATELY = re.compile(r"\s*(?:,|;)?\s*(?:or\s+)?(?:approximately|approx\.|about)\b.*$", re.IGNORECASE | re.DOTALL)
_EXPLANATION = re.compile(r"\s*\((?:i\.e\.|e\.g\.|that is|namely)[^)]*\)", re.IGNORECASE)
_ONLY_VALUE = re.compile(r"^(.+?)\s+is\s+the\s+only\s+(?:possible\s+)?(?:value|solution|answer)s?\.?$", re.IGNORECASE | re.DOTALL)
MAX_REFERENCE_FORMS = 4


def reference_forms(reference: str) -> list[str]:
    """The reference as written, then the exact forms a free-text reference names.

    >>> reference_forms("C(10, 5), or equivalently 252")
    ['C(10, 5), or equivalently 252', 'C(10, 5)', '252']
    >>> reference_forms("5/14, or approximately 35.7%")
    ['5/14, or approximately 35.7%', '5/14']
    >>> reference_forms("999 (i.e., all except for one value)"), reference_forms("3 is the only possible value")
    (['999 (i.e., all except for one value)', '999'], ['3 is the only possible value', '3'])
    >>> reference_forms("17"), reference_forms("No such values")
    (['17'], ['No such values'])
    """
    forms = [reference]
    if len(reference) > 400:  # a free-text answer is short; anything else is kept as written
        return forms
    for part in _EQUIVALENTLY.split(reference):
        part = _EXPLANATION.sub("", _APPROXIMATELY.sub("", part)).strip().rstrip(".")
        match = _ONLY_VALUE.match(part)
        if match:
            part = match.group(1).strip()
        if part and part not in forms:
            forms.append(part)
    return forms[:MAX_REFERENCE_FORMS]
