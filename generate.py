"""`python generate.py --task ... --ckpt_dir ...`: the reference's entry point (see wan/cli.py)."""
import sys

from wan.cli import generate_main

if __name__ == '__main__':
    sys.exit(generate_main())
