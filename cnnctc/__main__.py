"""`python -m cnnctc`, and also `python path/to/cnnctc/__main__.py` (launchers such as msrun take a file)."""
import os
import sys

if __package__:
    from .cli import console_main
else:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from cnnctc.cli import console_main

sys.exit(console_main())
