"""``python -m chatdb``: the same as the ``chatdb`` command."""

from .cli import main

if __name__ == "__main__":
    main()
