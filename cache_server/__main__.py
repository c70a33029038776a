"""`python -m cache_server`: sizes the BLAS pool before numpy is imported, then serves."""

import os
import sys

# numpy reads these once, at import: set them from the settings' variable (default 1 thread).
_threads = os.environ.get("CACHE_BLAS_THREADS", "1")
for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, _threads)

from cache_server.server import main  # noqa: E402

sys.exit(main())
