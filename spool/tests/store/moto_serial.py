"""moto_server with S3 PutObject serialised: what these tests run.

moto 5.2.5 checks `If-Match` / `If-None-Match` in `S3Response.put_object`
(moto/s3/responses.py) and stores the object several steps later, with no
lock between the check and the write. Its threaded server can therefore let
two concurrent conditional PUTs with the same ETag both pass the check, and
both "win": a compare-and-swap that is not atomic. Real S3 applies a
conditional write atomically (the loser gets 412, or 409 while the other is
in flight). This launcher wraps put_object in one lock so the check and the
write are one step, as in S3; everything else is moto unchanged.

Usage: python moto_serial.py [moto_server arguments]
"""

import sys
import threading

from moto.s3.responses import S3Response
from moto.server import main

_lock = threading.Lock()
_put_object = S3Response.put_object


def _serialised_put_object(self, *args, **kwargs):
    with _lock:
        return _put_object(self, *args, **kwargs)


S3Response.put_object = _serialised_put_object
print("moto_serial: S3 PutObject check-and-write serialised", flush=True)

if __name__ == "__main__":
    sys.exit(main())
