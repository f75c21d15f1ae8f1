"""moto_server with S3 PutObject serialised: what these tests run.

moto 5.2.5 checks `If-Match` / `If-None-Match` in `S3Response.put_object`
(moto/s3/responses.py) and stores the object several steps later, with no
lock between the check and the write. Its threaded server can therefore let
two concurrent conditional PUTs with the same ETag both pass the check, and
both "win": a compare-and-swap that is not atomic. Real S3 applies a
conditional write atomically (the loser gets 412, or 409 while the other is
in flight). This launcher wraps put_object in one lock so the check and the
write are one step, as in S3; everything else is moto unchanged.

It also stands in for what moto never does: answer `409
ConditionalRequestConflict`, which S3 sends while another conditional write
on the key is in flight. Every other conditional PUT to a key under
`hosts/c409-` (a host id tests pick for this) is answered 409 first, so the
store's retry of a 409 is exercised over HTTP.

Usage: python moto_serial.py [moto_server arguments]
"""

import sys
import threading

from moto.s3.responses import S3Response
from moto.server import main

_lock = threading.Lock()
_put_object = S3Response.put_object


_conditional_puts = {}
_CONFLICT_409 = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>ConditionalRequestConflict</Code>'
    b"<Message>A conflicting conditional operation is currently in progress against this"
    b" resource. Please try again.</Message></Error>"
)


def _serialised_put_object(self, *args, **kwargs):
    with _lock:
        key = self.parse_key_name()
        conditional = self.headers.get("If-Match") or self.headers.get("If-None-Match")
        if conditional and key.startswith("hosts/c409-"):
            n = _conditional_puts.get(key, 0) + 1
            _conditional_puts[key] = n
            if n % 2 == 1:
                return 409, {"Content-Type": "application/xml"}, _CONFLICT_409
        return _put_object(self, *args, **kwargs)


S3Response.put_object = _serialised_put_object
print("moto_serial: S3 PutObject check-and-write serialised", flush=True)

if __name__ == "__main__":
    sys.exit(main())
