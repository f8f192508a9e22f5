"""spatial-attn web app: ``python app.py`` (Hugging Face Spaces entry point).

Click any pixel of the image and see, for every attention layer, where that pixel looks.
"""

import argparse

from spatial_attn.app import launch
from spatial_attn.cli import add_serve_arguments

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_serve_arguments(parser)
    args = parser.parse_args()
    launch(args.model, host=args.host, port=args.port, share=args.share)
