"""``python -m edgeproxy``: the same as the ``edgeproxy`` console script."""

from .cli import main

if __name__ == "__main__":
    main()
