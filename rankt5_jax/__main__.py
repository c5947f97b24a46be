import sys

from rankt5_jax.cli import main

sys.exit(main())
