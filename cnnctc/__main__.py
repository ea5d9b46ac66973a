"""`python -m cnnctc`, and also `python path/to/cnnctc/__main__.py` (launchers such as msrun take a file)."""
import os
import sys

if __package__:
    from .cli import main
else:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from cnnctc.cli import main

sys.exit(main())
