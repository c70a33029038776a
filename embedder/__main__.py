import sys

from embedder.server import main

sys.exit(main())
