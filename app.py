"""spatial-attn web app: python app.py (also the Hugging Face Spaces entry point).

Click any pixel of the image and see, for every attention layer, where that pixel looks. The options
are those of ``spatial-attn serve`` and go through the same code.
"""

import argparse
import sys

from spatial_attn.cli import PlainHelp, add_serve_arguments, cmd_serve

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=PlainHelp)
    add_serve_arguments(parser)
    sys.exit(cmd_serve(parser.parse_args()))
