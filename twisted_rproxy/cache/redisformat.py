"""
How the Redis cache store (L{twisted_rproxy.cache.redisstore}) lays its
entries out in Redis: the keys, the encoding of a stored head, and the Lua
scripts that change several keys at once.

For a cache C{NAME}, under C{[state] key_prefix} (C{P}), a primary key
C{K} (C{H} its SHA1 in hexadecimal) and a variant C{V} (C{VH} its SHA1):

  - C{P cache:NAME:k:H}, a hash: field C{k} holds C{K}; field C{v}+C{V}
    the head of that variant, after its expiry time (Redis' clock, in
    milliseconds, as 15 digits).  The hash expires with its last variant.
  - C{P cache:NAME:b:H:VH}, a string: the variant's body, expiring with
    it.  A large body is written in pieces to C{P cache:NAME:tmp:H:TOKEN}
    first, then renamed, so that no more than a piece of it is copied at a
    time.
  - C{P cache:NAME:index}, a sorted set of every C{K} (score 0), read by
    lexicographic range for a purge by prefix; C{P cache:NAME:expiry}, the
    same keys scored by expiry, so that the index drops the keys gone.
  - C{P cache:NAME:lock:H}, the lock of a cold key's backend request
    (C{SET NX PX}).
"""

from __future__ import annotations

import hashlib
import json

from twisted_rproxy.cache.policy import parseCacheControl
from twisted_rproxy.messages import CacheEntry
from twisted_rproxy.state import Script

__all__ = [
    "APPEND",
    "GET",
    "PURGE",
    "PUT",
    "REMOVE",
    "UNLOCK",
    "decodeEntry",
    "digest",
    "encodeHead",
    "lexRange",
]

#: The format of a stored head; one of another version is not read.
FORMAT = 1


def digest(data: bytes) -> str:
    """
    The SHA1 of C{data} in hexadecimal, as Lua's C{redis.sha1hex} makes it.
    """
    return hashlib.sha1(data).hexdigest()


def _text(data: bytes) -> str:
    return data.decode("latin-1")


def encodeHead(entry: CacheEntry) -> bytes:
    """
    Everything of C{entry} but its key, variant and body, as JSON (bytes
    kept as Latin-1 text, which any byte maps to).
    """
    return json.dumps(
        {
            "f": FORMAT,
            "s": entry.status,
            "r": _text(entry.reason),
            "h": [[_text(name), _text(value)] for name, value in entry.headers],
            "y": [_text(name) for name in entry.varyOn],
            "t": entry.responseTime,
            "a": entry.initialAge,
            "l": entry.lifetime,
        },
        separators=(",", ":"),
    ).encode("ascii")


def decodeEntry(key: bytes, variant: bytes, head: bytes, body: bytes) -> CacheEntry:
    """
    The entry that L{encodeHead} wrote, with its body.

    @raise ValueError: If C{head} is not such a head.
    """
    try:
        data = json.loads(head)
        if data.get("f") != FORMAT:
            raise ValueError(f"stored head of format {data.get('f')!r}")
        headers = [
            (name.encode("latin-1"), value.encode("latin-1"))
            for name, value in data["h"]
        ]
        return CacheEntry(
            key=key,
            variant=variant,
            varyOn=tuple(name.encode("latin-1") for name in data["y"]),
            status=int(data["s"]),
            reason=data["r"].encode("latin-1"),
            headers=headers,
            body=body,
            responseTime=float(data["t"]),
            initialAge=float(data["a"]),
            lifetime=float(data["l"]),
            cacheControl=parseCacheControl(
                value for name, value in headers if name.lower() == b"cache-control"
            ),
        )
    except (KeyError, TypeError, AttributeError, UnicodeError) as e:
        raise ValueError(f"malformed stored head: {e!r}") from None


def lexRange(prefix: bytes) -> tuple[bytes, bytes]:
    """
    The C{ZRANGEBYLEX} bounds of the members that start with C{prefix}.
    """
    if not prefix:
        return b"-", b"+"
    end = prefix.rstrip(b"\xff")
    if not end:
        return b"[" + prefix, b"+"
    return b"[" + prefix, b"(" + end[:-1] + bytes([end[-1] + 1])


# Redis' clock in milliseconds (TIME: seconds, microseconds).  Before Redis
# 5, a script that reads the clock and writes must replicate its effects.
_NOW = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local function expiry(head) return tonumber(string.sub(head, 1, 15)) or 0 end
"""

# Remove every variant of one primary key (its heads hash and bodies);
# return how many were live.
_DROP = """
local function drop(heads, bodies)
  local fields = redis.call('HGETALL', heads)
  local count = 0
  for i = 1, #fields, 2 do
    local f = fields[i]
    if f ~= 'k' then
      local gone = redis.call('DEL', bodies .. redis.sha1hex(string.sub(f, 2)))
      if expiry(fields[i + 1]) > now then count = count + gone end
    end
  end
  redis.call('DEL', heads)
  return count
end
"""

#: Store one variant.  KEYS: heads hash, body, index, expiry index.  ARGV:
#: primary key, variant, head, TTL (ms), mode ("body": ARGV[6] is the body;
#: "rename": ARGV[6] is the key it was written to; "keep": the stored body
#: stays, only the head changes), ARGV[6], the prefix of this key's bodies,
#: the most variants per key.  Returns 1, or 0 if the body is missing.
PUT = Script(
    _NOW
    + """
local ttl = tonumber(ARGV[4])
local mode = ARGV[5]
if mode == 'body' then
  redis.call('SET', KEYS[2], ARGV[6], 'PX', ttl)
elseif mode == 'rename' then
  if redis.call('EXISTS', ARGV[6]) == 0 then return 0 end
  redis.call('RENAME', ARGV[6], KEYS[2])
  redis.call('PEXPIRE', KEYS[2], ttl)
elseif redis.call('PEXPIRE', KEYS[2], ttl) == 0 then
  return 0
end
local field = 'v' .. ARGV[2]
redis.call('HSET', KEYS[1], 'k', ARGV[1], field,
           string.format('%015d', now + ttl) .. ARGV[3])
local fields = redis.call('HGETALL', KEYS[1])
local live = {}
for i = 1, #fields, 2 do
  local f = fields[i]
  if f ~= 'k' then
    local e = expiry(fields[i + 1])
    if e <= now then
      redis.call('HDEL', KEYS[1], f)
      redis.call('DEL', ARGV[7] .. redis.sha1hex(string.sub(f, 2)))
    else
      live[#live + 1] = {e, f}
    end
  end
end
local most = tonumber(ARGV[8])
if #live > most then
  -- Too many variants: drop those that expire first (never this one).
  table.sort(live, function(a, b) return a[1] < b[1] end)
  local extra = #live - most
  local kept = {}
  for _, item in ipairs(live) do
    if extra > 0 and item[2] ~= field then
      redis.call('HDEL', KEYS[1], item[2])
      redis.call('DEL', ARGV[7] .. redis.sha1hex(string.sub(item[2], 2)))
      extra = extra - 1
    else
      kept[#kept + 1] = item
    end
  end
  live = kept
end
local latest = now + ttl
for _, item in ipairs(live) do
  if item[1] > latest then latest = item[1] end
end
redis.call('PEXPIREAT', KEYS[1], latest)
redis.call('ZADD', KEYS[3], 0, ARGV[1])
redis.call('ZADD', KEYS[4], latest, ARGV[1])
local gone = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, 64)
if #gone > 0 then
  redis.call('ZREM', KEYS[3], unpack(gone))
  redis.call('ZREM', KEYS[4], unpack(gone))
end
local last = redis.call('ZRANGE', KEYS[4], -1, -1, 'WITHSCORES')
if last[2] then
  redis.call('PEXPIREAT', KEYS[3], last[2])
  redis.call('PEXPIREAT', KEYS[4], last[2])
end
return 1
"""
)

#: Read every live variant of a key.  KEYS: heads hash, and optionally the
#: key's lock.  ARGV: the prefix of its bodies.  Returns: whether the lock
#: is held (0 or 1), the primary key (nil without one), then variant, head
#: and body of each live variant.
GET = Script(
    _NOW
    + """
local out = {0, false}
if KEYS[2] then out[1] = redis.call('EXISTS', KEYS[2]) end
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local f = fields[i]
  if f == 'k' then
    out[2] = fields[i + 1]
  elseif expiry(fields[i + 1]) > now then
    local variant = string.sub(f, 2)
    local body = redis.call('GET', ARGV[1] .. redis.sha1hex(variant))
    if body then
      out[#out + 1] = variant
      out[#out + 1] = string.sub(fields[i + 1], 16)
      out[#out + 1] = body
    end
  end
end
return out
"""
)

#: Remove one primary key.  KEYS: heads hash, index, expiry index.  ARGV:
#: the primary key, the prefix of its bodies.  Returns how many live
#: variants were removed.
REMOVE = Script(
    _NOW
    + _DROP
    + """
local count = drop(KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return count
"""
)

#: Remove up to a batch of the keys in a lexicographic range.  KEYS: index,
#: expiry index.  ARGV: range start, range end, batch size, the prefix of
#: heads hashes, the prefix of bodies.  Returns {variants removed, keys
#: looked at}: fewer keys than the batch means the range is empty now.
PURGE = Script(
    _NOW
    + _DROP
    + """
local members = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[1], ARGV[2],
                           'LIMIT', 0, tonumber(ARGV[3]))
local count = 0
for _, member in ipairs(members) do
  local h = redis.sha1hex(member)
  count = count + drop(ARGV[4] .. h, ARGV[5] .. h .. ':')
end
if #members > 0 then
  redis.call('ZREM', KEYS[1], unpack(members))
  redis.call('ZREM', KEYS[2], unpack(members))
end
return {count, #members}
"""
)

#: Append a piece of a body being written, unless its key expired (which
#: would make APPEND create a key that never expires).  KEYS: the key.
#: ARGV: the piece.  Returns the new length, or -1.
APPEND = Script(
    """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
return redis.call('APPEND', KEYS[1], ARGV[1])
"""
)

#: Release a lock if it is still the one taken.  KEYS: the lock.  ARGV:
#: its token.
UNLOCK = Script(
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
)
