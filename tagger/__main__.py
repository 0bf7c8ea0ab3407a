"""`python -m tagger` runs the same CLI as the `tagger` console script."""
from __future__ import annotations

from tagger.cli import main

if __name__ == "__main__":
    main()
