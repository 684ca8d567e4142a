"""Every daemon a test starts serves HTTP in its own process (``http.workers
= 1``) unless the test is about workers and says otherwise: daemons started
by the tests inherit this environment."""

import os

os.environ.setdefault("KNHKD_HTTP_WORKERS", "1")
