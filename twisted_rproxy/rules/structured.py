"""
Structured Field Values for HTTP (RFC 8941): parsing Lists, Dictionaries
and Items as section 4.2 says (strictly: any error fails the whole field),
and serializing the few values the proxy writes (section 4.1).

Bare items come out as Python values: L{int} (Integer), L{float}
(Decimal), L{str} (String), L{Token} (a L{str} subclass), L{bytes} (Byte
Sequence), L{bool} (Boolean). An Inner List is a L{list} of items. Each
member or item is a pair of its value and its parameters (a L{dict}).
"""

from __future__ import annotations

import base64
import binascii
import string

__all__ = [
    "BareItem",
    "Dictionary",
    "Item",
    "Member",
    "Parameters",
    "StructuredFieldError",
    "Token",
    "parseDictionary",
    "parseItem",
    "parseList",
    "serializeKey",
    "serializeNameItem",
    "serializeString",
    "serializeToken",
]


class Token(str):
    """
    An sf-token (RFC 8941 section 3.3.4), told apart from a String.
    """

    __slots__ = ()


class StructuredFieldError(ValueError):
    """
    A field value that does not parse as the structured type asked for.
    """


BareItem = int | float | str | bytes | bool
Parameters = dict[str, BareItem]
Item = tuple[BareItem, Parameters]
#: A List or Dictionary member: an Item, or an Inner List with its
#: parameters.
Member = tuple[BareItem | list[Item], Parameters]
Dictionary = dict[str, Member]

_DIGITS = frozenset(string.digits)
_LCALPHA = frozenset(string.ascii_lowercase)
_ALPHA = frozenset(string.ascii_letters)
_KEY_FIRST = _LCALPHA | {"*"}
_KEY_CHARS = _LCALPHA | _DIGITS | frozenset("_-.*")
_TCHAR = _ALPHA | _DIGITS | frozenset("!#$%&'*+-.^_`|~")
_TOKEN_CHARS = _TCHAR | frozenset(":/")
_BASE64 = _ALPHA | _DIGITS | frozenset("+/=")
_OWS = " \t"


class _Input:
    """
    What is left of a field value as it is parsed.
    """

    __slots__ = ("text", "position")

    def __init__(self, text: str) -> None:
        self.text = text
        self.position = 0

    def peek(self) -> str:
        return self.text[self.position : self.position + 1]

    def consume(self) -> str:
        char = self.text[self.position : self.position + 1]
        self.position += 1
        return char

    def empty(self) -> bool:
        return self.position >= len(self.text)

    def skip(self, chars: str) -> None:
        text, position = self.text, self.position
        while position < len(text) and text[position] in chars:
            position += 1
        self.position = position

    def fail(self, what: str) -> StructuredFieldError:
        return StructuredFieldError(f"{what} at offset {self.position}")


def _decode(value: bytes | str) -> _Input:
    """
    Section 4.2 steps 1 and 2: ASCII only, leading spaces dropped.
    """
    if isinstance(value, bytes):
        try:
            text = value.decode("ascii")
        except UnicodeDecodeError:
            raise StructuredFieldError("not ASCII") from None
    else:
        text = value
        if not text.isascii():
            raise StructuredFieldError("not ASCII")
    data = _Input(text)
    data.skip(" ")
    return data


def _finish(data: _Input) -> None:
    # Section 4.2 steps 4 and 5.
    data.skip(" ")
    if not data.empty():
        raise data.fail("unexpected text")


def _joined(values: bytes | str | list[bytes]) -> bytes | str:
    # Section 4.2: the field lines of a field are combined first.
    if isinstance(values, list):
        return b", ".join(values)
    return values


def parseList(values: bytes | str | list[bytes]) -> list[Member]:
    """
    Parse a List (RFC 8941 section 4.2.1).

    @param values: The field value, or its field lines (combined with
        commas, as section 4.2 says).
    @raise StructuredFieldError: If it does not parse.
    """
    data = _decode(_joined(values))
    members: list[Member] = []
    while not data.empty():
        members.append(_itemOrInnerList(data))
        _nextMember(data)
    _finish(data)
    return members


def parseDictionary(values: bytes | str | list[bytes]) -> Dictionary:
    """
    Parse a Dictionary (RFC 8941 section 4.2.2); a key given twice keeps
    its last value.

    @param values: The field value, or its field lines.
    @raise StructuredFieldError: If it does not parse.
    """
    data = _decode(_joined(values))
    dictionary: Dictionary = {}
    while not data.empty():
        key = _key(data)
        if data.peek() == "=":
            data.consume()
            member = _itemOrInnerList(data)
        else:
            member = (True, _parameters(data))
        dictionary[key] = member
        _nextMember(data)
    _finish(data)
    return dictionary


def parseItem(value: bytes | str) -> Item:
    """
    Parse an Item (RFC 8941 section 4.2.3).

    @raise StructuredFieldError: If it does not parse.
    """
    data = _decode(value)
    item = _item(data)
    _finish(data)
    return item


def _nextMember(data: _Input) -> None:
    data.skip(_OWS)
    if data.empty():
        return
    if data.consume() != ",":
        raise data.fail("expected a comma")
    data.skip(_OWS)
    if data.empty():
        raise data.fail("trailing comma")


def _itemOrInnerList(data: _Input) -> Member:
    if data.peek() == "(":
        return _innerList(data)
    return _item(data)


def _innerList(data: _Input) -> Member:
    # Section 4.2.1.2.
    data.consume()
    items: list[Item] = []
    while not data.empty():
        data.skip(" ")
        if data.peek() == ")":
            data.consume()
            return items, _parameters(data)
        items.append(_item(data))
        if data.peek() not in (" ", ")"):
            raise data.fail("expected a space or ')' in an inner list")
    raise data.fail("unterminated inner list")


def _item(data: _Input) -> Item:
    return _bareItem(data), _parameters(data)


def _parameters(data: _Input) -> Parameters:
    # Section 4.2.3.2.
    parameters: Parameters = {}
    while data.peek() == ";":
        data.consume()
        data.skip(" ")
        key = _key(data)
        value: BareItem = True
        if data.peek() == "=":
            data.consume()
            value = _bareItem(data)
        parameters[key] = value
    return parameters


def _key(data: _Input) -> str:
    # Section 4.2.3.3.
    if data.peek() not in _KEY_FIRST or data.empty():
        raise data.fail("expected a key")
    start = data.position
    text = data.text
    position = start + 1
    while position < len(text) and text[position] in _KEY_CHARS:
        position += 1
    data.position = position
    return text[start:position]


def _bareItem(data: _Input) -> BareItem:
    # Section 4.2.3.1.
    first = data.peek()
    if first == "-" or first in _DIGITS and first:
        return _number(data)
    if first == '"':
        return _string(data)
    if first == ":":
        return _byteSequence(data)
    if first == "?":
        return _boolean(data)
    if first and (first in _ALPHA or first == "*"):
        return _token(data)
    raise data.fail("expected an item")


def _number(data: _Input) -> int | float:
    # Section 4.2.4.
    sign = 1
    if data.peek() == "-":
        data.consume()
        sign = -1
    if data.empty() or data.peek() not in _DIGITS:
        raise data.fail("expected a digit")
    digits = ""
    decimal = False
    while not data.empty():
        char = data.peek()
        if char in _DIGITS:
            digits += char
        elif not decimal and char == ".":
            if len(digits) > 12:
                raise data.fail("decimal too large")
            digits += char
            decimal = True
        else:
            break
        data.consume()
        if not decimal and len(digits) > 15:
            raise data.fail("integer too large")
        if decimal and len(digits) > 16:
            raise data.fail("decimal too long")
    if not decimal:
        return sign * int(digits)
    if digits.endswith("."):
        raise data.fail("decimal without a fraction")
    if len(digits.split(".", 1)[1]) > 3:
        raise data.fail("decimal with more than 3 fractional digits")
    return sign * float(digits)


def _string(data: _Input) -> str:
    # Section 4.2.5.
    data.consume()
    out: list[str] = []
    while not data.empty():
        char = data.consume()
        if char == "\\":
            if data.empty():
                raise data.fail("unterminated escape")
            escaped = data.consume()
            if escaped not in ('"', "\\"):
                raise data.fail("invalid escape")
            out.append(escaped)
        elif char == '"':
            return "".join(out)
        elif not " " <= char <= "~":
            raise data.fail("invalid character in a string")
        else:
            out.append(char)
    raise data.fail("unterminated string")


def _token(data: _Input) -> Token:
    # Section 4.2.6.
    start = data.position
    data.consume()
    data.skip("".join(_TOKEN_CHARS))
    return Token(data.text[start : data.position])


def _byteSequence(data: _Input) -> bytes:
    # Section 4.2.7.
    data.consume()
    end = data.text.find(":", data.position)
    if end == -1:
        raise data.fail("unterminated byte sequence")
    content = data.text[data.position : end]
    data.position = end + 1
    if any(char not in _BASE64 for char in content):
        raise data.fail("invalid base64")
    try:
        # Parsers should not fail for want of "=" padding.
        return base64.b64decode(content + "=" * (-len(content) % 4), validate=True)
    except binascii.Error:
        raise data.fail("invalid base64") from None


def _boolean(data: _Input) -> bool:
    # Section 4.2.8.
    data.consume()
    value = data.consume()
    if value == "1":
        return True
    if value == "0":
        return False
    raise data.fail("expected ?0 or ?1")


def serializeKey(key: str) -> bytes:
    """
    A key (RFC 8941 section 4.1.1.3).

    @raise ValueError: If C{key} is not one.
    """
    if not key or key[0] not in _KEY_FIRST or any(c not in _KEY_CHARS for c in key):
        raise ValueError(f"not a structured field key: {key!r}")
    return key.encode("ascii")


def serializeToken(token: str) -> bytes:
    """
    An sf-token (RFC 8941 section 4.1.7).

    @raise ValueError: If C{token} is not one.
    """
    if (
        not token
        or not (token[0] in _ALPHA or token[0] == "*")
        or any(c not in _TOKEN_CHARS for c in token)
    ):
        raise ValueError(f"not a structured field token: {token!r}")
    return token.encode("ascii")


def serializeString(text: str) -> bytes:
    """
    An sf-string (RFC 8941 section 4.1.6).

    @raise ValueError: If C{text} has a character a String cannot hold
        (other than printable ASCII).
    """
    if any(not " " <= c <= "~" for c in text):
        raise ValueError(f"not a structured field string: {text!r}")
    return b'"' + text.replace("\\", "\\\\").replace('"', '\\"').encode("ascii") + b'"'


def serializeNameItem(name: str) -> bytes:
    """
    A name as an Item: a Token when it can be one, else a String (as RFC
    9211 section 2 lets a cache identify itself).

    @raise ValueError: If C{name} can be neither.
    """
    try:
        return serializeToken(name)
    except ValueError:
        return serializeString(name)
